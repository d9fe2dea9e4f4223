"""Password and secret hashing with scrypt (memory-hard, in the standard library).

Stored form: scrypt$<log2 N>$<salt b64>$<hash b64>.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_R, _P, _DKLEN = 8, 1, 32


def hash_password(password: str, *, cost: int) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password, salt, cost)
    return "scrypt${}${}${}".format(cost, _b64(salt), _b64(digest))


def verify_password(password: str, stored: str | None, *, cost: int) -> bool:
    """Constant work whether or not `stored` exists, so that an unknown user and
    a wrong password take the same time (no user enumeration by timing)."""
    if not stored:
        _scrypt(password, b"\0" * 16, cost)
        return False
    try:
        scheme, stored_cost, salt, digest = stored.split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(stored_cost))
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


def _scrypt(password: str, salt: bytes, cost: int) -> bytes:
    # hashlib.scrypt releases the GIL, so password checks run in parallel.
    return hashlib.scrypt(password.encode(), salt=salt, n=2 ** cost, r=_R, p=_P,
                          maxmem=256 * 1024 * 1024, dklen=_DKLEN)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
