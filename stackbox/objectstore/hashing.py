"""Name hashing shared by the ring (which partition) and the disk files
(which directory), so both always agree on where an object lives."""

from __future__ import annotations

import hashlib

from stackbox.common.errors import BadRequest


def object_path(account: str, container: str | None = None, obj: str | None = None) -> str:
    """The `/<account>/<container>/<obj>` string that gets hashed."""
    if not account:
        raise BadRequest("account is required", field="account")
    if obj is not None and container is None:
        raise BadRequest("an object name needs a container", field="container")
    parts = [account] + [p for p in (container, obj) if p is not None]
    for name, value in zip(("account", "container", "object"), parts):
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{name} must be a non-empty string", field=name)
    return "/" + "/".join(parts)


def hash_path(account: str, container: str | None = None, obj: str | None = None, *,
              prefix: str = "", suffix: str = "") -> bytes:
    """md5(prefix + path + suffix), Swift's hash_path.

    The secret prefix/suffix (per ring) stop a client from choosing names that
    all land in one partition. md5 is a spreading function here, not a
    security boundary, hence usedforsecurity=False (works under FIPS)."""
    path = object_path(account, container, obj)
    try:
        raw = (prefix + path + suffix).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest("names must be valid UTF-8", field="name") from exc
    return hashlib.md5(raw, usedforsecurity=False).digest()
