"""Neutron's list semantics on rendered resources, as pure functions:
filters (repeated = any of), tags/tags-any/not-tags/not-tags-any, fields,
sort_key/sort_dir, limit/marker with `<collection>_links`."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

from stackbox.common.errors import BadRequest

CONTROL = {"fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse",
           "tags", "tags-any", "not-tags", "not-tags-any"}


@dataclasses.dataclass
class ListQuery:
    filters: dict[str, list[str]]
    fields: list[str]
    sort: list[tuple[str, str]]
    limit: int | None
    marker: str | None
    page_reverse: bool
    tags: dict[str, set[str]]
    raw: list[tuple[str, str]]


def parse(pairs: list[tuple[str, str]]) -> ListQuery:
    filters: dict[str, list[str]] = {}
    fields: list[str] = []
    keys, dirs = [], []
    tags: dict[str, set[str]] = {}
    limit = marker = None
    reverse = False
    for k, v in pairs:
        if k == "fields":
            fields += [f for f in v.split(",") if f]
        elif k == "sort_key":
            keys.append(v)
        elif k == "sort_dir":
            if v not in ("asc", "desc"):
                raise BadRequest(f"Invalid input for sort_dir. Reason: '{v}' is not in "
                                 f"['asc', 'desc'].", field="sort_dir")
            dirs.append(v)
        elif k == "limit":
            try:
                limit = int(v)
            except ValueError:
                raise BadRequest(f"Invalid input for limit. Reason: '{v}' is not an integer.",
                                 field="limit")
            if limit < 0:
                raise BadRequest("Invalid input for limit. Reason: must be 0 or greater.",
                                 field="limit")
            limit = limit or None
        elif k == "marker":
            marker = v
        elif k == "page_reverse":
            reverse = v.lower() == "true"
        elif k in ("tags", "tags-any", "not-tags", "not-tags-any"):
            tags.setdefault(k, set()).update(t for t in v.split(",") if t)
        else:
            filters.setdefault(k, []).append(v)
    if dirs and len(dirs) != len(keys):
        raise BadRequest("The number of sort_keys and sort_dirs must be same",
                         field="sort_dir")
    sort = list(zip(keys, dirs or ["asc"] * len(keys)))
    return ListQuery(filters, fields, sort, limit, marker, reverse, tags, list(pairs))


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool):
        return wanted.lower() in (("true", "1") if value else ("false", "0"))
    if value is None:
        return wanted in ("", "None", "null")
    if isinstance(value, list):
        if "=" in wanted and value and isinstance(value[0], dict):
            key, _, v = wanted.partition("=")
            return any(str(entry.get(key)) == v for entry in value)
        return wanted in [str(x) for x in value]
    if isinstance(value, dict):
        key, _, v = wanted.partition("=")
        return str(value.get(key)) == v
    return str(value) == wanted


def _tag_ok(item: dict, tags: dict[str, set[str]]) -> bool:
    have = set(item.get("tags") or [])
    if "tags" in tags and not tags["tags"] <= have:
        return False
    if "tags-any" in tags and not tags["tags-any"] & have:
        return False
    if "not-tags" in tags and tags["not-tags"] <= have:
        return False
    if "not-tags-any" in tags and tags["not-tags-any"] & have:
        return False
    return True


def _sort_value(v):
    return (v is not None, str(v).lower() if isinstance(v, str) else
            v if isinstance(v, (int, float, bool)) else str(v))


def apply(items: list[dict], q: ListQuery, *, collection: str, base_url: str
          ) -> tuple[list[dict], list[dict]]:
    """(page, links). `items` are already what the caller may see."""
    if items:
        known = set(items[0])
        for key in q.filters:
            if key not in known:
                raise BadRequest(f"[{key}] is invalid attribute for filtering", field=key)
        for key, _ in q.sort:
            if key not in known:
                raise BadRequest(f"{key} is an invalid attribute for sort_keys", field="sort_key")
    out = [i for i in items
           if all(any(_matches(i.get(k), v) for v in vs) for k, vs in q.filters.items())
           and _tag_ok(i, q.tags)]
    for key, direction in reversed(q.sort):
        out.sort(key=lambda i: _sort_value(i.get(key)), reverse=direction == "desc")
    links: list[dict] = []
    if q.marker:
        idx = next((n for n, i in enumerate(out) if i["id"] == q.marker), None)
        if idx is None:
            raise BadRequest(f"marker [{q.marker}] not found", field="marker")
        out = out[:idx] if q.page_reverse else out[idx + 1:]
        if q.page_reverse:
            out = out[-q.limit:] if q.limit else out
    if q.limit is not None and len(out) > q.limit:
        out = out[:q.limit]
        params = [(k, v) for k, v in q.raw if k not in ("marker", "limit", "page_reverse")]
        params += [("limit", str(q.limit)), ("marker", out[-1]["id"])]
        links.append({"rel": "next", "href": f"{base_url}/v2.0/{collection}?{urlencode(params)}"})
    if q.marker and out:
        params = [(k, v) for k, v in q.raw if k not in ("marker", "limit", "page_reverse")]
        params += ([("limit", str(q.limit))] if q.limit else []) + [
            ("marker", out[0]["id"]), ("page_reverse", "True")]
        links.append({"rel": "previous",
                      "href": f"{base_url}/v2.0/{collection}?{urlencode(params)}"})
    return [project(i, q.fields) for i in out], links


def project(item: dict, fields: list[str]) -> dict:
    if not fields:
        return item
    return {k: v for k, v in item.items() if k in fields}
