"""Pure pieces of the Swift HTTP dialect: byte ranges, conditional requests,
metadata headers and listing bodies (text, JSON, XML). No I/O, so each is
unit-tested directly."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import re
import time
from xml.sax.saxutils import escape, quoteattr

from stackbox.common.errors import BadRequest, StackboxError
from stackbox.objectstore.errors import PreconditionFailed
from stackbox.objectstore.service import (ContainerEntry, ObjectEntry, Subdir)

_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(StackboxError):
    """416: every range of a syntactically valid Range header is outside the object."""

    def __init__(self, message: str = "The Range requested is not available."):
        super().__init__(message, field="range")


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """[(start, end_exclusive), ...] of a `Range: bytes=` header, or None for
    the whole object. Like Swift (RFC 7233): a malformed header is ignored
    (whole object), unsatisfiable specs are dropped, and if none is left the
    answer is 416. More than 50 ranges are refused as Swift does (a cheap
    amplification attack otherwise)."""
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    out = []
    parts = specs.split(",")
    if len(parts) > 50:
        return None
    for part in parts:
        m = _RANGE_SPEC.match(part)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            return None
        first, last = m.group(1), m.group(2)
        if first == "":
            n = int(last)
            if n == 0:
                continue
            out.append((max(0, size - n), size))
            continue
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
        if last != "" and int(last) < start:
            return None
        if start >= size:
            continue
        out.append((start, end))
    if not out:
        raise RangeNotSatisfiable()
    return out


def _etags(value: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in value.split(",") if t.strip()]


def _http_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def check_conditions(headers, *, etag: str, last_modified: dt.datetime,
                     method: str) -> bool:
    """Evaluate If-Match / If-None-Match / If-Modified-Since /
    If-Unmodified-Since in RFC 7232 order. Returns False for "304 Not
    Modified" (GET/HEAD), raises PreconditionFailed for 412."""
    lm = last_modified.replace(microsecond=0)
    im = headers.get("if-match")
    if im is not None:
        tags = _etags(im)
        if "*" not in tags and etag not in tags:
            raise PreconditionFailed("If-Match does not match the ETag", field="if-match")
    else:
        ius = _http_date(headers.get("if-unmodified-since"))
        if ius is not None and lm > ius:
            raise PreconditionFailed("modified since If-Unmodified-Since",
                                     field="if-unmodified-since")
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = _etags(inm)
        if "*" in tags or etag in tags:
            if method in ("GET", "HEAD"):
                return False
            raise PreconditionFailed("If-None-Match matches the ETag", field="if-none-match")
    elif method in ("GET", "HEAD"):
        ims = _http_date(headers.get("if-modified-since"))
        if ims is not None and lm <= ims:
            return False
    return True


def http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.timezone.utc).replace(microsecond=0),
                                       usegmt=True)


def meta_from_headers(headers, kind: str) -> dict:
    """X-<Kind>-Meta-Foo: v -> {"foo": "v"}; X-Remove-<Kind>-Meta-Foo -> {"foo": ""}."""
    prefix, remove = f"x-{kind}-meta-", f"x-remove-{kind}-meta-"
    out: dict = {}
    for name, value in headers.items():
        name = name.lower()
        if name.startswith(prefix):
            out[name[len(prefix):]] = value
        elif name.startswith(remove):
            out[name[len(remove):]] = ""
    return out


def meta_headers(meta: dict, kind: str) -> dict:
    return {f"X-{kind.title()}-Meta-{_title(k)}": v for k, v in sorted(meta.items())}


def _title(name: str) -> str:
    return "-".join(p[:1].upper() + p[1:] for p in name.split("-"))


def int_header(headers, name: str, *, minimum: int = 0) -> int | None:
    raw = headers.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}", field=name) from None
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, got {value}", field=name)
    return value


# --- listings -------------------------------------------------------------------

def listing_format(query, accept: str) -> str:
    """'json', 'xml' or 'plain', from ?format= first, then Accept."""
    fmt = (query.get("format") or "").lower()
    if fmt in ("json", "xml", "plain"):
        return fmt
    if fmt:
        raise BadRequest(f"format={fmt!r} is not one of json, xml, plain", field="format")
    accept = accept.lower()
    if "application/json" in accept:
        return "json"
    if "application/xml" in accept or "text/xml" in accept:
        return "xml"
    return "plain"


CONTENT_TYPES = {"json": "application/json; charset=utf-8",
                 "xml": "application/xml; charset=utf-8",
                 "plain": "text/plain; charset=utf-8"}


@functools.lru_cache(maxsize=4096)
def _iso_seconds(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def _lm(entry) -> str:
    """A listing's last_modified (UTC, microseconds) straight from the entry's
    X-Timestamp string: exact, and no datetime per row (a page has 10,000)."""
    secs, _, frac = entry.timestamp.partition(".")
    return f"{_iso_seconds(int(secs))}.{(frac + '000000')[:6]}"


def render_objects(entries: list, fmt: str, container: str) -> bytes:
    if fmt == "plain":
        return "".join((e.name + "\n") for e in entries).encode()
    if fmt == "json":
        out = []
        for e in entries:
            if isinstance(e, Subdir):
                out.append({"subdir": e.name})
            else:
                d = {"name": e.name, "hash": e.etag, "bytes": e.size,
                     "content_type": e.content_type, "last_modified": _lm(e)}
                if e.slo:
                    d["slo_etag"] = f'"{e.etag}"'
                out.append(d)
        return json.dumps(out).encode()
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<container name={quoteattr(container)}>']
    for e in entries:
        if isinstance(e, Subdir):
            parts.append(f"<subdir name={quoteattr(e.name)}><name>{escape(e.name)}</name>"
                         f"</subdir>")
        else:
            assert isinstance(e, ObjectEntry)
            parts.append(f"<object><name>{escape(e.name)}</name><hash>{e.etag}</hash>"
                         f"<bytes>{e.size}</bytes><content_type>{escape(e.content_type)}"
                         f"</content_type><last_modified>{_lm(e)}</last_modified></object>")
    parts.append("</container>")
    return "".join(parts).encode()


def render_containers(entries: list, fmt: str, account: str) -> bytes:
    if fmt == "plain":
        return "".join((e.name + "\n") for e in entries).encode()
    if fmt == "json":
        return json.dumps([{"subdir": e.name} if isinstance(e, Subdir) else
                           {"name": e.name, "count": e.object_count, "bytes": e.bytes_used,
                            "last_modified": _lm(e)} for e in entries]).encode()
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<account name={quoteattr(account)}>']
    for e in entries:
        if isinstance(e, Subdir):
            parts.append(f"<subdir name={quoteattr(e.name)}><name>{escape(e.name)}</name>"
                         f"</subdir>")
        else:
            assert isinstance(e, ContainerEntry)
            parts.append(f"<container><name>{escape(e.name)}</name><count>{e.object_count}"
                         f"</count><bytes>{e.bytes_used}</bytes><last_modified>{_lm(e)}"
                         f"</last_modified></container>")
    parts.append("</account>")
    return "".join(parts).encode()
