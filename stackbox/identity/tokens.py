"""Fernet tokens: authenticated and encrypted, verified with no database
write. The payload is deterministic JSON; the key ring lives in the database
so every API host verifies every token.

Rotation adds a new primary key; older keys keep verifying until every token
they signed has expired, then they are dropped.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select

from stackbox.common.db import Database, utcnow
from stackbox.common.errors import Unauthorized
from stackbox.identity.models import SigningKey

PAYLOAD_VERSION = 1


def new_audit_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


class TokenPayload(dict):
    """Keys: v, u (user id), m (methods), p (project id) | d (domain id),
    e (expires, epoch s), i (issued, epoch µs), a (audit ids), ac (app cred id)."""

    @property
    def user_id(self) -> str:
        return self["u"]

    @property
    def expires_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self["e"], dt.timezone.utc)

    @property
    def issued_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self["i"] / 1e6, dt.timezone.utc)


class KeyRing:
    """Signing keys from the database, refreshed at most every `refresh` s."""

    def __init__(self, db: Database, *, rotation: int, token_lifetime: int, refresh: float = 30):
        self.db = db
        self.rotation = rotation
        self.token_lifetime = token_lifetime
        self.refresh = refresh
        self._lock = threading.Lock()
        self._fernet: MultiFernet | None = None
        self._loaded = 0.0

    def ensure_key(self) -> None:
        """Create the first key, or rotate when the primary is older than `rotation`."""
        with self.db.transaction() as s:
            newest = s.scalars(select(SigningKey).order_by(SigningKey.id.desc()).limit(1)).first()
            if newest is None or (utcnow() - newest.created_at).total_seconds() >= self.rotation:
                self._add_key(s)
        self._loaded = 0.0

    def rotate(self) -> int:
        with self.db.transaction() as s:
            key_id = self._add_key(s)
        self._loaded = 0.0
        return key_id

    def _add_key(self, s) -> int:
        key = SigningKey(key=Fernet.generate_key().decode(), created_at=utcnow())
        s.add(key)
        s.flush()
        # A key stays while a token it signed can still be valid: it stopped being
        # primary when the next key arrived, so keep keys newer than that bound.
        keys = list(s.scalars(select(SigningKey).order_by(SigningKey.id.desc())))
        cutoff = utcnow() - dt.timedelta(seconds=self.token_lifetime + 60)
        for older, newer in zip(keys[1:], keys[:-1]):
            if newer.created_at < cutoff:
                s.execute(delete(SigningKey).where(SigningKey.id == older.id))
        return key.id

    def fernet(self) -> MultiFernet:
        now = time.monotonic()
        if self._fernet is None or now - self._loaded > self.refresh:
            with self._lock:
                if self._fernet is None or now - self._loaded > self.refresh:
                    with self.db.read() as s:
                        keys = [k.key for k in s.scalars(
                            select(SigningKey).order_by(SigningKey.id.desc()))]
                    if not keys:
                        raise RuntimeError("no token signing key: run ensure_key() first")
                    self._fernet = MultiFernet([Fernet(k) for k in keys])
                    self._loaded = now
        return self._fernet

    def reload(self) -> None:
        self._loaded = 0.0


class TokenCodec:
    def __init__(self, keys: KeyRing):
        self.keys = keys

    def encode(self, payload: dict) -> str:
        raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return self.keys.fernet().encrypt(raw).decode().rstrip("=")

    def decode(self, token: str) -> TokenPayload:
        padded = token + "=" * (-len(token) % 4)
        try:
            raw = self.keys.fernet().decrypt(padded.encode())
        except (InvalidToken, ValueError, TypeError):
            # A key may have been added on another host since we loaded the ring.
            self.keys.reload()
            try:
                raw = self.keys.fernet().decrypt(padded.encode())
            except (InvalidToken, ValueError, TypeError):
                raise Unauthorized("The request you have made requires authentication.")
        payload = TokenPayload(json.loads(raw))
        if payload.get("v") != PAYLOAD_VERSION:
            raise Unauthorized("The request you have made requires authentication.")
        if payload["e"] <= time.time():
            raise Unauthorized("The request you have made requires authentication.")
        return payload
