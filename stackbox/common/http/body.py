"""Request bodies: JSON parsing and validation that names the failing field."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from stackbox.common.errors import BadRequest

M = TypeVar("M", bound=BaseModel)

MAX_BODY = 1024 * 1024


async def json_body(request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"Request body is larger than {MAX_BODY} bytes.")
    if not raw.strip():
        raise BadRequest("Malformed request body: the body is empty; a JSON object is required.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Malformed request body: not valid JSON ({e}).")
    if not isinstance(data, dict):
        raise BadRequest("Malformed request body: the top level must be a JSON object.")
    return data


def validate(model: type[M], data: dict, *, root: str | None = None) -> M:
    """Validate `data[root]` (or `data`) against `model`; on failure raise
    BadRequest naming the first bad field as `root.field`."""
    payload = data
    if root is not None:
        if root not in data:
            raise BadRequest(f"Invalid input for field '{root}': '{root}' is a required "
                             f"property.", field=root)
        payload = data[root]
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in ((root,) if root else ()) + tuple(err["loc"])) or root
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "a required property is missing"
        elif err["type"] == "extra_forbidden":
            msg = "additional properties are not allowed"
        raise BadRequest(f"Invalid input for field '{loc}': {msg}.", field=loc)
