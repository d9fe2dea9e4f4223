"""Password and secret hashing with scrypt (memory-hard, in the standard library).

Stored form: scrypt$<log2 N>$<salt b64>$<hash b64>.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time

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


# hashlib.scrypt releases the GIL, so checks run in parallel; more at once than
# there are cores only adds memory (2**cost * 1 KiB each), not throughput.
_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 2)


def _scrypt(password: str, salt: bytes, cost: int) -> bytes:
    with _SLOTS:
        return _scrypt_unbounded(password, salt, cost)


def _scrypt_unbounded(password: str, salt: bytes, cost: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2 ** cost, r=_R, p=_P,
                          maxmem=256 * 1024 * 1024, dklen=_DKLEN)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class VerifiedCache:
    """Remembers, for `ttl` seconds, that a (user, stored hash, password)
    triple verified, so a client that logs in for every command (the
    `openstack` CLI does) does not pay a full KDF run each time. Entries are
    HMACs under a per-process random key: nothing reversible is kept, and a
    password change (a new stored hash) misses the cache by construction.
    The same idea as Apache's mod_authn_socache."""

    def __init__(self, ttl: float, max_entries: int = 10000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = os.urandom(32)
        self._entries: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _digest(self, user_id: str, stored: str, password: str) -> bytes:
        msg = "\0".join((user_id, stored, password)).encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def hit(self, user_id: str, stored: str | None, password: str) -> bool:
        if self.ttl <= 0 or not stored:
            return False
        expires = self._entries.get(self._digest(user_id, stored, password))
        return expires is not None and expires > time.monotonic()

    def remember(self, user_id: str, stored: str, password: str) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[self._digest(user_id, stored, password)] = time.monotonic() + self.ttl
