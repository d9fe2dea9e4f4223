"""One-time console tokens: the secret in a console URL.

The compute API issues a token when a user asks for a console URL
(`openstack console url show`); the console proxy consumes it when the
browser or client connects. A token opens one connection, once, before it
expires; an open connection is not cut when the token expires.

Only a SHA-256 of each token is stored, so whoever reads the store (a
database dump, a debug log) cannot open a console. The store is a small
backend interface so the compute service can keep tokens in its database
(several API hosts, one proxy) while tests and a single process use memory.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from stackbox.compute.drivers.base import ConsoleEndpoint

# Console kinds as the proxy speaks them; the compute API maps Nova's
# (protocol, type) pairs onto these: (vnc, novnc) -> vnc, (serial, serial) -> serial.
KINDS = ("vnc", "serial")

# Tombstones of used and expired tokens are kept this long past expiry so a
# second attempt is told "already used" / "expired" rather than "unknown".
TOMBSTONE_SECONDS = 3600


@dataclass(frozen=True)
class TokenRecord:
    """What the store keeps for one token (never the token itself)."""
    token_hash: str
    instance_uuid: str
    kind: str
    endpoint: ConsoleEndpoint
    expires_at: float                 # unix time
    used_at: float | None = None

    def to_json(self) -> dict:
        """A JSON-able form for a database column or file; from_json reverses it."""
        ep = self.endpoint
        return {"token_hash": self.token_hash, "instance_uuid": self.instance_uuid,
                "kind": self.kind, "expires_at": self.expires_at, "used_at": self.used_at,
                "endpoint": {"kind": ep.kind, "host": ep.host, "port": ep.port,
                             "unix_path": str(ep.unix_path) if ep.unix_path else None}}

    @classmethod
    def from_json(cls, doc: dict) -> "TokenRecord":
        ep = doc["endpoint"]
        endpoint = ConsoleEndpoint(kind=ep["kind"], host=ep.get("host") or "",
                                   port=int(ep.get("port") or 0),
                                   unix_path=Path(ep["unix_path"]) if ep.get("unix_path") else None)
        return cls(token_hash=doc["token_hash"], instance_uuid=doc["instance_uuid"],
                   kind=doc["kind"], endpoint=endpoint, expires_at=float(doc["expires_at"]),
                   used_at=doc.get("used_at"))


class TokenBackend(Protocol):
    """Where token records live. A database backend implements `claim` as one
    conditional UPDATE (`... SET used_at = :now WHERE token_hash = :h AND
    used_at IS NULL AND expires_at > :now`, true when one row changed) so two
    proxies racing for the same token cannot both win."""

    def add(self, record: TokenRecord) -> None: ...

    def claim(self, token_hash: str, now: float) -> bool:
        """Atomically mark an unused, unexpired token used; False otherwise."""

    def get(self, token_hash: str) -> TokenRecord | None: ...

    def purge(self, before: float) -> int:
        """Delete records that expired before `before`; returns how many."""


class MemoryTokenBackend:
    """Tokens in this process's memory (one stackbox process serves both
    the compute API and the proxy)."""

    def __init__(self):
        self._records: dict[str, TokenRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: TokenRecord) -> None:
        with self._lock:
            self._records[record.token_hash] = record

    def claim(self, token_hash: str, now: float) -> bool:
        with self._lock:
            rec = self._records.get(token_hash)
            if rec is None or rec.used_at is not None or rec.expires_at <= now:
                return False
            self._records[token_hash] = replace(rec, used_at=now)
            return True

    def get(self, token_hash: str) -> TokenRecord | None:
        with self._lock:
            return self._records.get(token_hash)

    def purge(self, before: float) -> int:
        with self._lock:
            old = [h for h, r in self._records.items() if r.expires_at < before]
            for h in old:
                del self._records[h]
            return len(old)

    def __len__(self) -> int:
        return len(self._records)


class DatabaseTokenBackend:
    """Tokens in the compute tables, so any API process can issue what any
    proxy consumes; `claim` is one conditional UPDATE."""

    def __init__(self, db):
        self.db = db

    def add(self, record: TokenRecord) -> None:
        from stackbox.compute.models import ConsoleToken
        doc = record.to_json()
        with self.db.transaction() as s:
            s.add(ConsoleToken(token_hash=record.token_hash, server_id=record.instance_uuid,
                               kind=record.kind, endpoint=doc["endpoint"],
                               expires_at=record.expires_at, used_at=record.used_at))

    def claim(self, token_hash: str, now: float) -> bool:
        from sqlalchemy import update
        from stackbox.compute.models import ConsoleToken
        with self.db.transaction() as s:
            done = s.execute(update(ConsoleToken).where(
                ConsoleToken.token_hash == token_hash, ConsoleToken.used_at.is_(None),
                ConsoleToken.expires_at > now).values(used_at=now))
            return done.rowcount == 1

    def get(self, token_hash: str) -> TokenRecord | None:
        from stackbox.compute.models import ConsoleToken
        with self.db.read() as s:
            row = s.get(ConsoleToken, token_hash)
            if row is None:
                return None
            return TokenRecord.from_json({
                "token_hash": row.token_hash, "instance_uuid": row.server_id,
                "kind": row.kind, "endpoint": row.endpoint, "expires_at": row.expires_at,
                "used_at": row.used_at})

    def purge(self, before: float) -> int:
        from sqlalchemy import delete
        from stackbox.compute.models import ConsoleToken
        with self.db.transaction() as s:
            return s.execute(delete(ConsoleToken)
                             .where(ConsoleToken.expires_at < before)).rowcount


class ConsoleTokenError(Exception):
    """A token that opens nothing. `reason` is for people and is safe to send
    to the client (it never contains the token)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


EndpointLookup = Callable[[str, str], ConsoleEndpoint]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleTokens:
    """issue() for the compute API, consume() / resolve() for the proxy."""

    def __init__(self, backend: TokenBackend | None = None, *, ttl: float = 600,
                 clock: Callable[[], float] = time.time):
        self.backend = backend if backend is not None else MemoryTokenBackend()
        self.ttl = ttl
        self.clock = clock

    def issue(self, instance_uuid: str, kind: str, endpoint_lookup: EndpointLookup) -> str:
        """A new token for the `kind` console of an instance. `endpoint_lookup`
        is the compute driver's `console_endpoint(uuid, kind)`: it runs now,
        so an instance without that console fails here (in the API call, as
        Nova's 409/400 does) and not later in the user's browser."""
        if kind not in KINDS:
            raise ValueError(f"console kind {kind!r} not supported (allowed: {', '.join(KINDS)})")
        endpoint = endpoint_lookup(instance_uuid, kind)
        if endpoint.unix_path is None and not (endpoint.host and endpoint.port):
            raise ValueError(f"console endpoint of {instance_uuid} has neither a unix "
                             f"socket nor host:port")
        now = self.clock()
        self.backend.purge(now - TOMBSTONE_SECONDS)
        token = secrets.token_urlsafe(32)
        self.backend.add(TokenRecord(token_hash=hash_token(token), instance_uuid=instance_uuid,
                                     kind=kind, endpoint=endpoint, expires_at=now + self.ttl))
        return token

    def consume(self, token: str) -> TokenRecord:
        """The record of a valid token, which is used up by this call. Raises
        ConsoleTokenError saying whether it was unknown, used or expired."""
        if not token:
            raise ConsoleTokenError("no console token in the request (expected ?token=...)")
        digest = hash_token(token)
        now = self.clock()
        if self.backend.claim(digest, now):
            record = self.backend.get(digest)
            if record is not None:
                return record
        record = self.backend.get(digest)
        if record is None:
            raise ConsoleTokenError("console token unknown: ask for a new console URL")
        if record.used_at is not None:
            raise ConsoleTokenError("console token already used: each console URL opens "
                                    "one connection; ask for a new one")
        raise ConsoleTokenError("console token expired: ask for a new console URL")

    def resolver(self) -> Callable[[str], Awaitable[TokenRecord]]:
        """An async consume() for the proxy; a database backend blocks, so it
        runs in a worker thread."""
        import asyncio

        async def resolve(token: str) -> TokenRecord:
            return await asyncio.to_thread(self.consume, token)
        return resolve
