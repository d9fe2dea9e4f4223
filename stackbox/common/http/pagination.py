"""limit/marker pagination with `links`, as Nova, Glance, Neutron and Cinder do."""

from __future__ import annotations

from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from stackbox.common.errors import BadRequest


def parse_limit(raw: str | None, *, max_limit: int = 1000) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid input for field 'limit': {raw!r} is not an integer.",
                         field="limit")
    if limit < 0:
        raise BadRequest("Invalid input for field 'limit': must be 0 or greater.",
                         field="limit")
    return min(limit, max_limit)


def paginate(items: Sequence[Any], *, limit: int | None, marker: str | None,
             key: Callable[[Any], str] = lambda item: item["id"]) -> tuple[list, str | None]:
    """Return (page, next_marker). `items` are already filtered and sorted.
    An unknown marker is a 400 naming it, as Nova and Neutron answer."""
    start = 0
    if marker:
        for i, item in enumerate(items):
            if key(item) == marker:
                start = i + 1
                break
        else:
            raise BadRequest(f"marker [{marker}] not found", field="marker")
    if limit is None:
        return list(items[start:]), None
    page = list(items[start:start + limit])
    more = start + limit < len(items)
    return page, (key(page[-1]) if more and page else None)


def next_link(base_url: str, path: str, query: dict[str, str], *, marker: str,
              limit: int) -> dict[str, str]:
    params = {k: v for k, v in query.items() if k not in ("marker", "limit")}
    params.update(limit=str(limit), marker=marker)
    return {"rel": "next", "href": f"{base_url}{path}?{urlencode(params)}"}
