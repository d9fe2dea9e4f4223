"""What both compute API modules use: the call a handler gets (request,
context, negotiated microversion) and the parsing and response helpers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from stackbox.common.errors import BadRequest
from stackbox.common.http.microversion import Version


@dataclasses.dataclass
class Call:
    request: Request
    ctx: Any
    mv: Version
    params: dict

    @property
    def query(self):
        return self.request.query_params


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json",
                    headers=headers)


def _empty(status: int = 202) -> Response:
    return Response(status_code=status)


def _bool(raw: str | None, name: str) -> bool | None:
    if raw is None:
        return None
    low = raw.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise BadRequest(f"Invalid value {raw!r} for {name}: use true or false.", field=name)


def _int(value, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        out = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid input for field/attribute {name}. Value: {value}. "
                         f"{value!r} is not an integer", field=name)
    if out < minimum or (maximum is not None and out > maximum):
        raise BadRequest(f"Invalid input for field/attribute {name}. Value: {value}. "
                         f"It must be between {minimum} and {maximum or 'unbounded'}.",
                         field=name)
    return out


def _object(body: dict, key: str) -> dict:
    value = body.get(key)
    if not isinstance(value, dict):
        raise BadRequest(f"Invalid input: the request body needs a '{key}' object.", field=key)
    return value


def _time(raw: str, name: str):
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"Invalid {name} value {raw!r}: use an ISO 8601 time.", field=name)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _name(value, what: str = "name") -> str:
    """A resource name as Nova takes it: a string of 1-255 characters, not blank."""
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise BadRequest(f"Invalid input for field/attribute {what}: a string of 1-255 "
                         "characters is required.", field=what)
    return value
