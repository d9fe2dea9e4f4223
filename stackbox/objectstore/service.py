"""Object storage service: the rules, the listings, the counters. No HTTP.

This is the interface both front ends (Swift v1 in api.py, S3 in s3/) call.
Names are plain `str` (already URL-decoded); accounts are Swift account names
(`AUTH_<project_id>`, see `account_for`). Every method is synchronous and
blocking (disk + database) and is meant to run in a worker thread, except
the `*_async` ones, which hop to threads by themselves, and small reads,
which `loop_reads` (LoopReads) runs on the event loop while the page cache
serves them. Errors are domain errors (stackbox.common.errors and
stackbox.objectstore.errors): NotFound, Conflict (non-empty container),
BadRequest(field=...) (names, metadata), EntityTooLarge (413),
Unprocessable (ETag mismatch, 422), PreconditionFailed (412),
QuotaExceeded, InsufficientStorage (507).

Accounts and containers
    account_info(account) -> AccountInfo
    post_account(account, *, meta={name: value or ""}, sysmeta=...)      ("" removes)
    list_containers(account, Listing) -> [ContainerEntry | Subdir]
    create_container(account, container, *, meta, sysmeta) -> bool (created?)
    container_info(account, container, *, cached=True) -> ContainerInfo
    post_container(account, container, *, meta, sysmeta)
    delete_container(account, container)                 Conflict if not empty
    list_objects(account, container, Listing) -> [ObjectEntry | Subdir]
Objects
    put_object(account, container, name, chunks: Iterable[bytes], *, ...) -> ObjectInfo
    await put_object_async(account, container, name, chunks: AsyncIterable[bytes], ...)
    open_object(account, container, name) -> OpenObject  (.info, .iter_range(a, b), .close())
    head_object(account, container, name) -> ObjectInfo
    post_object(account, container, name, *, meta, content_type, delete_at, headers)
    copy_object(src_account, src_container, src_name, account, container, name, ...)
    delete_object(account, container, name) -> ObjectInfo (what was deleted)
    await delete_object_async(account, container, name, *, check=None)
    put_slo_manifest(account, container, name, segments, ...) -> ObjectInfo
    expire(now=None, limit=1000) -> int   (the expirer's pass)
Who may do what: authorize(caller, account, container, write=, listing=, referrer=)
    await authorize_async(...): the same from an event loop (the owner check
    stays there; anyone else's ACL check, a database query, goes to a thread)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterable, Callable, Iterable, Iterator

import anyio
from sqlalchemy import func, select

from stackbox.common.db import Database
from stackbox.common.generation import LocalGeneration
from stackbox.common.errors import (BadRequest, Conflict, Forbidden, NotFound, QuotaExceeded,
                                    Unauthorized)
from stackbox.objectstore import acl
from stackbox.objectstore.diskfile import normalize_timestamp, run_steps
from stackbox.objectstore.errors import (EntityTooLarge, OlderTimestamp, PreconditionFailed,
                                         Quarantined, Unprocessable)
from stackbox.objectstore.loopreads import LoopReads, must_not_block
from stackbox.objectstore.steprunner import Listed
from stackbox.objectstore.uring import step_runner
from stackbox.objectstore.listings import ListingWriter, Put, Remove
from stackbox.objectstore.models import Account, Container, Object
from stackbox.objectstore.storage import ObjectBackend

# Swift's default constraints (swift.conf [swift-constraints]); /info reports them.
MAX_FILE_SIZE = 5 * 1024 ** 3
MAX_META_NAME_LENGTH = 128
MAX_META_VALUE_LENGTH = 256
MAX_META_COUNT = 90
MAX_META_OVERALL_SIZE = 4096
MAX_OBJECT_NAME_LENGTH = 1024
MAX_CONTAINER_NAME_LENGTH = 256
MAX_ACCOUNT_NAME_LENGTH = 256
CONTAINER_LISTING_LIMIT = 10000
ACCOUNT_LISTING_LIMIT = 10000
MAX_MANIFEST_SEGMENTS = 1000
MAX_MANIFEST_SIZE = 8 * 1024 * 1024
MIN_SEGMENT_SIZE = 1
OPERATOR_ROLES = ("admin", "member")
RESELLER_ROLES = ("ResellerAdmin",)
DEFAULT_CONTENT_TYPE = "application/octet-stream"
CONTAINER_CACHE_SECONDS = 5.0
WRITE_BUFFER = 1024 * 1024        # bytes gathered before a hop to the write thread


def account_for(project_id: str) -> str:
    return f"AUTH_{project_id}"


def now_timestamp() -> str:
    return normalize_timestamp(time.time())


# --- values handed to the front ends ------------------------------------------

DELIMITER_BATCH = 4     # rows fetched after a delimiter listing jumps past a subdir


@dataclass(frozen=True)
class Listing:
    prefix: str = ""
    delimiter: str = ""
    marker: str = ""
    end_marker: str = ""
    limit: int = CONTAINER_LISTING_LIMIT
    reverse: bool = False


@dataclass(frozen=True)
class Subdir:
    name: str


@dataclass(frozen=True)
class ObjectEntry:
    name: str
    size: int
    etag: str
    content_type: str
    timestamp: str
    slo: bool = False

    @property
    def last_modified(self) -> dt.datetime:
        return _ts_datetime(self.timestamp)


@dataclass(frozen=True)
class ContainerEntry:
    name: str
    object_count: int
    bytes_used: int
    timestamp: str

    @property
    def last_modified(self) -> dt.datetime:
        return _ts_datetime(self.timestamp)


@dataclass(frozen=True)
class AccountInfo:
    account: str
    container_count: int
    object_count: int
    bytes_used: int
    meta: dict
    sysmeta: dict
    timestamp: str


@dataclass(frozen=True)
class ContainerInfo:
    account: str
    name: str
    object_count: int
    bytes_used: int
    meta: dict
    sysmeta: dict          # read_acl, write_acl (tuples), versions_location, quota_*, ...
    timestamp: str

    @property
    def read_acl(self) -> tuple[str, ...]:
        return tuple(self.sysmeta.get("read_acl", ()))

    @property
    def write_acl(self) -> tuple[str, ...]:
        return tuple(self.sysmeta.get("write_acl", ()))


@dataclass(frozen=True)
class ObjectInfo:
    account: str
    container: str
    name: str
    size: int
    etag: str                     # md5 hex; for an SLO: md5 of the segments' etags
    content_type: str
    timestamp: str
    meta: dict = field(default_factory=dict)       # user metadata, lower-case names
    headers: dict = field(default_factory=dict)    # content-disposition/-encoding, x-object-manifest
    delete_at: int | None = None
    slo: bool = False
    manifest_etag: str | None = None   # SLO: md5 of the manifest body itself

    @property
    def last_modified(self) -> dt.datetime:
        return _ts_datetime(self.timestamp)

    @classmethod
    def from_disk(cls, account, container, name, meta: dict) -> "ObjectInfo":
        return cls(account=account, container=container, name=name,
                   size=int(meta.get("slo_size", meta["size"])),
                   etag=meta.get("slo_etag", meta["etag"]),
                   content_type=meta.get("content_type", DEFAULT_CONTENT_TYPE),
                   timestamp=meta["timestamp"], meta=dict(meta.get("meta", {})),
                   headers=dict(meta.get("headers", {})), delete_at=meta.get("delete_at"),
                   slo=bool(meta.get("slo")),
                   manifest_etag=meta["etag"] if meta.get("slo") else None)


def _ts_datetime(ts: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc)


# --- validation ------------------------------------------------------------------

def _utf8(value: str, what: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} name is not valid UTF-8", field=what) from None
    if b"\x00" in raw:
        raise BadRequest(f"{what} name contains a NUL byte", field=what)
    return raw


def check_account(account: str) -> None:
    if not account or len(_utf8(account, "account")) > MAX_ACCOUNT_NAME_LENGTH:
        raise BadRequest(f"account name must be 1..{MAX_ACCOUNT_NAME_LENGTH} bytes",
                         field="account")


def check_container(name: str) -> None:
    raw = _utf8(name or "", "container")
    if not raw:
        raise BadRequest("container name is empty", field="container")
    if b"/" in raw:
        raise BadRequest("container name may not contain '/'", field="container")
    if len(raw) > MAX_CONTAINER_NAME_LENGTH:
        raise BadRequest(f"container name length of {len(raw)} longer than "
                         f"{MAX_CONTAINER_NAME_LENGTH}", field="container")


def check_object(name: str) -> None:
    raw = _utf8(name or "", "object")
    if not raw:
        raise BadRequest("object name is empty", field="object")
    if len(raw) > MAX_OBJECT_NAME_LENGTH:
        raise BadRequest(f"object name length of {len(raw)} longer than "
                         f"{MAX_OBJECT_NAME_LENGTH}", field="object")


def check_metadata(meta: dict, *, kind: str, existing: dict | None = None) -> dict:
    """Merge `meta` into `existing` ("" removes a key) and apply Swift's
    limits to the result. Names are lower-cased (HTTP headers are not case
    sensitive; the API title-cases them on the way out)."""
    merged = dict(existing or {})
    for name, value in meta.items():
        key = name.lower()
        if not key:
            raise BadRequest(f"{kind} metadata name is empty", field=f"{kind}-meta")
        header = f"X-{kind.title()}-Meta-{key}"
        if len(key.encode()) > MAX_META_NAME_LENGTH:
            raise BadRequest(f"Metadata name too long: {header[:60]}... is longer than "
                             f"{MAX_META_NAME_LENGTH} bytes", field=header)
        if len(str(value).encode()) > MAX_META_VALUE_LENGTH:
            raise BadRequest(f"Metadata value longer than {MAX_META_VALUE_LENGTH}: "
                             f"{header}", field=header)
        if value == "" or value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    if len(merged) > MAX_META_COUNT:
        raise BadRequest(f"too many {kind} metadata items: {len(merged)}, limit "
                         f"{MAX_META_COUNT}", field=f"x-{kind}-meta-*")
    total = sum(len(k.encode()) + len(v.encode()) for k, v in merged.items())
    if total > MAX_META_OVERALL_SIZE:
        raise BadRequest(f"{kind} metadata is {total} bytes in all, limit "
                         f"{MAX_META_OVERALL_SIZE}", field=f"x-{kind}-meta-*")
    return merged


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with prefix."""
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# --- the service ------------------------------------------------------------------

class OpenObject:
    """An object ready to stream: `info` (size/etag of what a GET returns) and
    `iter_range(start, end)` (end exclusive). For an SLO manifest the bytes are
    the concatenated segments, unless opened with manifest=True."""

    def __init__(self, info: ObjectInfo, reader, svc: "ObjectStoreService", *,
                 segments: list[dict] | None = None, manifest_body: bytes | None = None):
        self.info = info
        self._reader = reader
        self._svc = svc
        self.segments = segments
        self.manifest_body = manifest_body

    @property
    def size(self) -> int:
        """Bytes iter_range yields: the assembled size, or the stored body's."""
        return self.info.size if self.segments is not None else self._reader.size

    @property
    def body_etag(self) -> str:
        """md5 of the stored body (for an SLO opened with manifest=True: of
        the manifest itself)."""
        return self.info.etag if self.segments is not None else self._reader.etag

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size if end is None else end
        if self.segments is None:
            return self._reader.read_range(start, end)
        if not 0 <= start <= end <= self.size:
            raise BadRequest(f"range {start}-{end} is outside 0-{self.size}", field="range")
        return self._svc.iter_concat(self.info.account, _pieces(self.segments, start, end))

    def file_span(self, start: int, end: int) -> tuple[int, int, int] | None:
        """(fd, offset, count) of iter_range(start, end)'s bytes in one local
        file, to be sent from it (sendfile); None where they are not (SLO
        segments, a remote replica, or a read that re-hashes the object)."""
        span = getattr(self._reader, "file_span", None)
        return span(start, end) if span is not None and self.segments is None else None

    def read(self) -> bytes:
        return b"".join(self.iter_range())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ObjectStoreService:
    def __init__(self, db: Database, backend: ObjectBackend, *,
                 operator_roles: tuple[str, ...] = OPERATOR_ROLES,
                 reseller_roles: tuple[str, ...] = RESELLER_ROLES, generation=None,
                 io_uring: bool = True):
        self.db = db
        # bumped on every container or account metadata change, so caches in
        # the other processes serving this store drop what they hold
        self.generation = generation or LocalGeneration()
        self.backend = backend
        self.operator_roles = operator_roles
        self.reseller_roles = reseller_roles
        self._containers: dict[tuple[str, str], tuple[float, int, ContainerInfo]] = {}
        self._cache_lock = threading.Lock()
        self._listings = ListingWriter(db.engine)
        self.steps = step_runner(self._listings, io_uring=io_uring)
        self.loop_reads = LoopReads()         # small GETs on the event loop while cached
        self._accounts: dict[str, tuple[float, int, int | None]] = {}

    def close(self) -> None:
        """Stop the small writes' runner, then let go of the listing writer's
        connection and the backend's threads."""
        self.steps.close()
        self._listings.close()
        self.backend.close()

    # -- authorization -------------------------------------------------------
    def is_reseller(self, ctx) -> bool:
        return ctx is not None and any(r in getattr(ctx, "roles", ()) for r in self.reseller_roles)

    def is_owner(self, ctx, account: str) -> bool:
        if ctx is None or not getattr(ctx, "project_id", None):
            return False
        if self.is_reseller(ctx):
            return True
        return (account == account_for(ctx.project_id)
                and any(r in ctx.roles for r in self.operator_roles))

    def authorize(self, ctx, account: str, container: str | None = None, *,
                  write: bool = False, listing: bool = False, referrer: str | None = None,
                  owner_only: bool = False) -> bool:
        """Allow or raise: the owner (operator role on the account's project)
        and reseller admins may do anything; others only what the container's
        ACLs grant. Returns True when the caller is the owner."""
        if self.is_owner(ctx, account):
            return True
        must_not_block()        # the container's ACLs may need a database query
        authenticated = ctx is not None and getattr(ctx, "user_id", None) is not None
        if container is not None and not owner_only:
            try:
                info = self.container_info(account, container)
            except NotFound:
                info = None
            if info is not None:
                caller = acl.Caller(project_id=getattr(ctx, "project_id", None),
                                    project_name=getattr(ctx, "project_name", None),
                                    user_id=getattr(ctx, "user_id", None),
                                    user_name=getattr(ctx, "user_name", None))
                ok = (acl.user_allowed(info.write_acl, caller) if write else
                      acl.can_read(info.read_acl, caller, referrer=referrer, listing=listing))
                if ok:
                    return False
        if not authenticated:
            raise Unauthorized("This request requires a token (X-Auth-Token) or a container "
                               "ACL that allows anonymous access.")
        raise Forbidden(f"Access to {account}{'/' + container if container else ''} is not "
                        f"allowed for this token.")

    async def authorize_async(self, ctx, account: str, container: str | None = None,
                              **kw) -> bool:
        """authorize() from an event loop: the owner check there (roles, no
        I/O), anyone else's ACL check (a database query) in a worker thread."""
        if self.is_owner(ctx, account):
            return True
        return await anyio.to_thread.run_sync(
            functools.partial(self.authorize, ctx, account, container, **kw))

    # -- accounts ------------------------------------------------------------
    def account_info(self, account: str) -> AccountInfo:
        check_account(account)
        must_not_block()
        with self.db.read() as s:
            row = s.get(Account, account)
            count, objects, used = s.execute(
                select(func.count(), func.coalesce(func.sum(Container.object_count), 0),
                       func.coalesce(func.sum(Container.bytes_used), 0))
                .where(Container.account == account)).one()
        ts = normalize_timestamp(row.created_at.timestamp()) if row else now_timestamp()
        return AccountInfo(account=account, container_count=int(count),
                           object_count=int(objects), bytes_used=int(used),
                           meta=dict(row.meta) if row else {},
                           sysmeta=dict(row.sysmeta) if row else {}, timestamp=ts)

    def post_account(self, account: str, *, meta: dict | None = None,
                     sysmeta: dict | None = None) -> AccountInfo:
        check_account(account)
        with self.db.transaction() as s:
            row = s.get(Account, account)
            if row is None:
                row = Account(account=account, meta={}, sysmeta={})
                s.add(row)
            row.meta = check_metadata(meta or {}, kind="account", existing=row.meta)
            merged = dict(row.sysmeta)
            for k, v in (sysmeta or {}).items():
                if v in (None, ""):
                    merged.pop(k, None)
                else:
                    merged[k] = v
            row.sysmeta = merged
        self._accounts.pop(account, None)
        self.generation.bump()
        return self.account_info(account)

    def list_containers(self, account: str, listing: Listing = Listing()) -> list:
        check_account(account)
        limit = max(0, min(listing.limit, ACCOUNT_LISTING_LIMIT))
        out: list = []
        with self.db.read() as s:
            def fetch(marker: str, n: int):
                q = select(Container.name, Container.object_count, Container.bytes_used,
                           Container.put_timestamp).where(Container.account == account)
                q = self._range(q, Container.name, listing, marker)
                return s.execute(q.limit(n)).all()
            for name, extra in self._walk(fetch, listing, limit):
                if extra is None:
                    out.append(Subdir(name))
                else:
                    out.append(ContainerEntry(name=name, object_count=extra[1],
                                              bytes_used=extra[2], timestamp=extra[3]))
        return out

    # -- listings -------------------------------------------------------------
    @staticmethod
    def _range(q, col, listing: Listing, marker: str):
        """Bounds for a listing page as an index range (never a LIKE scan)."""
        lo, hi = listing.prefix or None, _prefix_end(listing.prefix)
        if listing.reverse:
            if marker:
                hi = marker if hi is None or marker < hi else hi
                q = q.where(col < hi)
            elif hi is not None:
                q = q.where(col < hi)
            if lo is not None:
                q = q.where(col >= lo)
            if listing.end_marker:
                q = q.where(col > listing.end_marker)
            return q.order_by(col.desc())
        if marker and (lo is None or marker >= lo):
            q = q.where(col > marker)
        elif lo is not None:
            q = q.where(col >= lo)
        if hi is not None:
            q = q.where(col < hi)
        if listing.end_marker:
            q = q.where(col < listing.end_marker)
        return q.order_by(col)

    @staticmethod
    def _walk(fetch, listing: Listing, limit: int):
        """Yield (name, row) or (subdir, None) up to limit. With a delimiter, a
        run of names under one subdir is skipped by moving the marker past it
        (Swift's trick), so a directory of a million objects costs one query."""
        count, marker = 0, listing.marker
        batch = min(max(limit, 1) + 1, 1000)
        # With a delimiter a fetch may end at its first row (a subdir): ask for
        # a few rows after each jump and grow while no subdir turns up, so 100
        # subdirs cost ~100 small queries, not 100 x 1,000 rows.
        size = min(DELIMITER_BATCH, batch) if listing.delimiter else batch
        while count < limit:
            rows = fetch(marker, size)
            if not rows:
                return
            skipped = False
            for row in rows:
                name = row[0]
                if listing.delimiter:
                    rest = name[len(listing.prefix):]
                    i = rest.find(listing.delimiter)
                    if i >= 0:
                        subdir = listing.prefix + rest[:i + len(listing.delimiter)]
                        # a client paging on with marker=<subdir> has seen it
                        if listing.reverse or not listing.marker or subdir > listing.marker:
                            yield subdir, None
                            count += 1
                        # jump past every name under the subdir in one step
                        marker = subdir if listing.reverse else subdir + "\U0010ffff"
                        skipped = True
                        break
                yield name, row
                count += 1
                marker = name
                if count >= limit:
                    return
            if not skipped and len(rows) < size:
                return
            size = min(DELIMITER_BATCH, batch) if skipped else min(size * 4, batch)

    def list_objects(self, account: str, container: str, listing: Listing = Listing()) -> list:
        self.container_info(account, container)
        limit = max(0, min(listing.limit, CONTAINER_LISTING_LIMIT))
        now = int(time.time())
        out: list = []
        with self.db.read() as s:
            def fetch(marker: str, n: int):
                q = select(Object.name, Object.size, Object.etag, Object.content_type,
                           Object.timestamp, Object.slo, Object.delete_at).where(
                    Object.account == account, Object.container == container)
                q = self._range(q, Object.name, listing, marker)
                return s.execute(q.limit(n)).all()
            for name, row in self._walk(fetch, listing, limit):
                if row is None:
                    out.append(Subdir(name))
                elif row[6] is not None and row[6] <= now:
                    continue    # expired; the expirer removes it soon
                else:
                    out.append(ObjectEntry(name=name, size=row[1], etag=row[2],
                                           content_type=row[3], timestamp=row[4], slo=row[5]))
        return out

    # -- containers -------------------------------------------------------------
    def create_container(self, account: str, container: str, *, meta: dict | None = None,
                         sysmeta: dict | None = None) -> bool:
        """Create, or update the metadata of an existing container (Swift's PUT
        semantics). Returns True when it was created."""
        check_account(account)
        check_container(container)
        created = False
        with self.db.transaction() as s:
            row = s.get(Container, (account, container))
            if row is None:
                quota = self._account_sysmeta(s, account).get("quota_containers")
                if quota is not None:
                    n = s.scalar(select(func.count()).where(Container.account == account))
                    if n >= int(quota):
                        raise QuotaExceeded("containers", limit=int(quota), in_use=n,
                                            requested=1)
                row = Container(account=account, name=container, meta={}, sysmeta={},
                                object_count=0, bytes_used=0, put_timestamp=now_timestamp())
                s.add(row)
                created = True
            row.meta = check_metadata(meta or {}, kind="container", existing=row.meta)
            row.sysmeta = _merge(row.sysmeta, sysmeta)
        self._forget(account, container)
        return created

    def _account_quota(self, account: str) -> int | None:
        hit = self._accounts.get(account)
        gen = self.generation.value()
        if hit is None or hit[0] <= time.monotonic() or hit[1] != gen:
            must_not_block()
            with self.db.read() as s:
                quota = self._account_sysmeta(s, account).get("quota_bytes")
            hit = self._accounts[account] = (time.monotonic() + CONTAINER_CACHE_SECONDS, gen,
                                             quota)
        return hit[2]

    @staticmethod
    def _account_sysmeta(s, account: str) -> dict:
        row = s.get(Account, account)
        return dict(row.sysmeta) if row else {}

    def container_info(self, account: str, container: str, *,
                       cached: bool = True) -> ContainerInfo:
        check_container(container)
        key = (account, container)
        gen = self.generation.value()
        if cached:
            hit = self._containers.get(key)
            if hit and hit[0] > time.monotonic() and hit[1] == gen:
                return hit[2]
        must_not_block()        # a database query (put_object_async's check on the loop)
        with self.db.read() as s:
            row = s.get(Container, key)
            if row is None:
                raise NotFound(f"container {container} not found", field="container")
            info = ContainerInfo(account=account, name=container,
                                 object_count=row.object_count, bytes_used=row.bytes_used,
                                 meta=dict(row.meta), sysmeta=dict(row.sysmeta),
                                 timestamp=row.put_timestamp)
        with self._cache_lock:
            self._containers[key] = (time.monotonic() + CONTAINER_CACHE_SECONDS, gen, info)
        return info

    def _forget(self, account: str, container: str) -> None:
        with self._cache_lock:
            self._containers.pop((account, container), None)
        self.generation.bump()

    def post_container(self, account: str, container: str, *, meta: dict | None = None,
                       sysmeta: dict | None = None) -> ContainerInfo:
        check_container(container)
        with self.db.transaction() as s:
            row = s.get(Container, (account, container))
            if row is None:
                raise NotFound(f"container {container} not found", field="container")
            row.meta = check_metadata(meta or {}, kind="container", existing=row.meta)
            row.sysmeta = _merge(row.sysmeta, sysmeta)
        self._forget(account, container)
        return self.container_info(account, container, cached=False)

    def delete_container(self, account: str, container: str) -> None:
        check_container(container)
        with self.db.transaction() as s:
            row = s.get(Container, (account, container))
            if row is None:
                raise NotFound(f"container {container} not found", field="container")
            live = s.scalar(select(Object.name).where(
                Object.account == account, Object.container == container).limit(1))
            if live is not None:
                raise Conflict(f"There was a conflict when trying to complete your request: "
                               f"container {container} is not empty.", field="container")
            s.delete(row)
        self._forget(account, container)

    # -- objects: writes -----------------------------------------------------------
    def _precheck_put(self, account, container, name, *, size, meta, delete_at,
                      if_none_match) -> ContainerInfo:
        check_account(account)
        check_object(name)
        info = self.container_info(account, container)
        if size is not None and size > MAX_FILE_SIZE:
            raise EntityTooLarge(f"object of {size} bytes is larger than the limit of "
                                 f"{MAX_FILE_SIZE} bytes; use a large object (SLO/DLO)",
                                 field="content-length")
        check_metadata(meta or {}, kind="object")
        if delete_at is not None and delete_at <= time.time():
            raise BadRequest("X-Delete-At is in the past", field="x-delete-at")
        if if_none_match:
            try:
                self.head_object(account, container, name)
            except NotFound:
                pass
            else:
                raise PreconditionFailed("If-None-Match: * and the object exists",
                                         field="if-none-match")
        self._check_quota(info, size or 0, 1)
        return info

    def _check_quota(self, info: ContainerInfo, add_bytes: int, add_count: int) -> None:
        qb, qc = info.sysmeta.get("quota_bytes"), info.sysmeta.get("quota_count")
        fresh = None
        if qb is not None or qc is not None:
            fresh = self.container_info(info.account, info.name, cached=False)
        if qb is not None and fresh.bytes_used + add_bytes > int(qb):
            raise EntityTooLarge(f"Upload exceeds quota: container {info.name} holds "
                                 f"{fresh.bytes_used} of {qb} bytes", field="quota-bytes")
        if qc is not None and fresh.object_count + add_count > int(qc):
            raise EntityTooLarge(f"Upload exceeds quota: container {info.name} holds "
                                 f"{fresh.object_count} of {qc} objects", field="quota-count")
        aq = self._account_quota(info.account)
        if aq is not None:
            used = self.account_info(info.account).bytes_used
            if used + add_bytes > int(aq):
                raise EntityTooLarge(f"Upload exceeds quota: account holds {used} of {aq} "
                                     f"bytes", field="quota-bytes")

    def _disk_meta(self, *, content_type, meta, headers, delete_at, etag, size,
                   extra=None) -> dict:
        d = {"content_type": content_type or DEFAULT_CONTENT_TYPE,
             "meta": check_metadata(meta or {}, kind="object"),
             "headers": dict(headers or {})}
        if delete_at is not None:
            d["delete_at"] = int(delete_at)
        if etag:
            d["etag"] = etag.strip('"').lower()
        if size is not None:
            d["size"] = size
        d.update(extra or {})
        return d

    def put_object(self, account: str, container: str, name: str, chunks: Iterable[bytes], *,
                   content_type: str | None = None, meta: dict | None = None,
                   headers: dict | None = None, etag: str | None = None,
                   size: int | None = None, delete_at: int | None = None,
                   if_none_match: bool = False, extra: dict | None = None,
                   versioned: bool = True) -> ObjectInfo:
        """Store an object from a byte iterator. `etag` (md5 hex) and `size`,
        when given, must match the data (Unprocessable / BadRequest otherwise).
        Nothing is visible unless the whole body arrived and a quorum of
        replicas is durable; the listing row is written before returning."""
        info = self._precheck_put(account, container, name, size=size, meta=meta,
                                  delete_at=delete_at, if_none_match=if_none_match)
        w = self.backend.writer(account, container, name)
        try:
            for chunk in chunks:
                if chunk:
                    w.write(chunk)
                    if w.size > MAX_FILE_SIZE:
                        raise EntityTooLarge("object is larger than the limit of "
                                             f"{MAX_FILE_SIZE} bytes", field="body")
        except BaseException:
            w.abort()
            raise
        return self._finish_put(w, info, name, content_type=content_type, meta=meta,
                                headers=headers, etag=etag, size=size, delete_at=delete_at,
                                extra=extra, versioned=versioned)

    async def put_object_async(self, account: str, container: str, name: str,
                               chunks: AsyncIterable[bytes], **kw) -> ObjectInfo:
        """put_object for an async stream (a request body). A small body
        (under WRITE_BUFFER, all held in memory) is checked on the event loop
        while the caches answer (LoopReads) and written to disk by the step
        runner, together with the other small PUTs and DELETEs that wait
        (stackbox.objectstore.steprunner); with a remote device, in a worker
        thread. A large one is written WRITE_BUFFER at a time in a worker
        thread while the event loop receives the next buffer (one write in
        flight, so memory stays at about two buffers)."""
        state: dict = {}

        def precheck() -> ContainerInfo:
            return self._precheck_put(
                account, container, name, size=kw.get("size"), meta=kw.get("meta"),
                delete_at=kw.get("delete_at"), if_none_match=kw.get("if_none_match", False))

        def start(info: ContainerInfo | None = None):
            state["info"] = info or precheck()
            state["w"] = self.backend.writer(account, container, name)

        def flush(data: bytes):
            if "w" not in state:
                start()
            state["w"].write(data)
            if state["w"].size > MAX_FILE_SIZE:
                raise EntityTooLarge(f"object is larger than the limit of {MAX_FILE_SIZE} "
                                     f"bytes", field="body")

        def finish(data: bytes):
            if "w" not in state:
                start(state.get("info"))
            if data:
                flush(data)
            return self._finish_put(state["w"], state["info"], name, record=False, **{
                k: v for k, v in kw.items() if k != "if_none_match"})

        def finish_steps(info: ContainerInfo, data: bytes):
            # in the step runner's thread, with the other PUTs waiting
            start(info)
            if data:
                flush(data)
            obj = yield from self._finish_put_steps(state["w"], state["info"], name,
                                                    record=False, **{
                k: v for k, v in kw.items() if k != "if_none_match"})
            return Listed(obj, self._listing_put(obj))    # the runner writes the row

        parts: list[bytes] = []
        held = 0
        writing: asyncio.Future | None = None
        try:
            async for chunk in chunks:
                parts.append(chunk)
                held += len(chunk)
                if held >= WRITE_BUFFER:
                    data = b"".join(parts)
                    parts.clear()
                    held = 0
                    if writing is not None:
                        await writing        # the previous buffer is on its way to disk
                    writing = asyncio.ensure_future(anyio.to_thread.run_sync(flush, data))
            if writing is not None:
                await writing
                writing = None
            if "w" not in state and self.backend.all_local:     # all of it held here
                info = await self.loop_reads.run(precheck)
                if self._quick(info):
                    obj, _listed = await self.steps.run(finish_steps(info, b"".join(parts)))
                    return obj
                state["info"] = info        # checked already: the thread need not check again
            obj = await anyio.to_thread.run_sync(finish, b"".join(parts))
        except BaseException:
            with anyio.CancelScope(shield=True):
                if writing is not None:
                    # let the write in flight end before the upload is discarded
                    await asyncio.gather(writing, return_exceptions=True)
                if "w" in state:
                    await anyio.to_thread.run_sync(state["w"].abort)
            raise
        await self._listings.apply_async(self._listing_put(obj))
        return obj

    @staticmethod
    def _quick(info: ContainerInfo) -> bool:
        """Whether a small write into this container is only file-system calls
        for the step runner: no versions to copy or restore, no container
        quota to check against the database (they would hold up the whole
        batch; such writes take a worker thread)."""
        return not any(info.sysmeta.get(k) is not None for k in (
            "history_location", "versions_location", "quota_bytes", "quota_count"))

    def _finish_put(self, w, info: ContainerInfo, name: str, **kw) -> ObjectInfo:
        """record=False: the caller writes the listing row (put_object_async
        awaits it on its event loop instead of holding a thread)."""
        return run_steps(self._finish_put_steps(w, info, name, **kw))

    def _finish_put_steps(self, w, info: ContainerInfo, name: str, *, content_type=None,
                          meta=None, headers=None, etag=None, size=None, delete_at=None,
                          extra=None, versioned=True, record=True):
        """_finish_put as a generator of steps (ReplicatedWriter.commit_steps)."""
        try:
            if size is not None and w.size != size:
                raise BadRequest(f"Content-Length says {size} bytes but {w.size} arrived",
                                 field="content-length")
            if info.sysmeta.get("quota_bytes") is not None or \
                    info.sysmeta.get("quota_count") is not None:
                self._check_quota(info, w.size, 1)
            disk = self._disk_meta(content_type=content_type, meta=meta, headers=headers,
                                   delete_at=delete_at, etag=None, size=None, extra=extra)
            if versioned:
                self._archive_current(info, name)
            ts = now_timestamp()
            if not etag:
                stored = yield from w.commit_steps(disk, ts)
            else:
                try:
                    stored = yield from w.commit_steps(dict(disk, etag=etag.strip('"').lower()),
                                                       ts)
                except BadRequest as exc:
                    if exc.field == "etag":
                        raise Unprocessable(f"Unprocessable Entity: the ETag {etag} does not "
                                            f"match the data received", field="etag") from None
                    raise
        except BaseException:
            w.abort()
            raise
        obj = ObjectInfo.from_disk(info.account, info.name, name, stored)
        if record:
            self._record(obj)
        return obj

    def _record(self, obj: ObjectInfo) -> None:
        """The listing row and the container counters (group commit with the
        other PUTs and DELETEs of this process: stackbox.objectstore.listings)."""
        self._listings.apply(self._listing_put(obj))

    @staticmethod
    def _listing_put(obj: ObjectInfo) -> Put:
        return Put(obj.account, obj.container, obj.name, obj.size, obj.etag,
                   obj.content_type, obj.timestamp, obj.delete_at, obj.slo)

    def post_object(self, account: str, container: str, name: str, *,
                    meta: dict | None = None, content_type: str | None = None,
                    headers: dict | None = None, delete_at: int | None | bool = False
                    ) -> ObjectInfo:
        """Replace the object's user metadata (Swift POST semantics: the new
        set replaces the old). delete_at=False keeps the current expiry,
        None removes it. The data is rewritten with the new metadata (simple
        and durable; costs a copy for big objects)."""
        src = self.open_object(account, container, name, manifest=True)
        with src:
            old = src.info
            new_delete_at = old.delete_at if delete_at is False else delete_at
            hdrs = {k: v for k, v in old.headers.items() if k == "x-object-manifest"}
            hdrs.update(headers or {})
            extra = self._slo_extra(old)
            return self.put_object(account, container, name, src.iter_range(),
                                   content_type=content_type or old.content_type,
                                   meta=meta or {}, headers=hdrs, delete_at=new_delete_at,
                                   extra=extra, versioned=False)

    @staticmethod
    def _slo_extra(info: ObjectInfo) -> dict:
        if not info.slo:
            return {}
        return {"slo": True, "slo_size": info.size, "slo_etag": info.etag}

    def copy_object(self, src_account: str, src_container: str, src_name: str,
                    account: str, container: str, name: str, *, meta: dict | None = None,
                    content_type: str | None = None, headers: dict | None = None,
                    fresh_metadata: bool = False, manifest: bool = False,
                    delete_at: int | None = None, versioned: bool = True) -> ObjectInfo:
        """Server-side copy. The copy gets the source's metadata with `meta`
        merged over it (or only `meta` when fresh_metadata). An SLO source is
        copied as its assembled content unless manifest=True."""
        src = self.open_object(src_account, src_container, src_name, manifest=manifest)
        with src:
            info = src.info
            merged = {} if fresh_metadata else dict(info.meta)
            merged.update({k.lower(): v for k, v in (meta or {}).items()})
            hdrs = {} if fresh_metadata else dict(info.headers)
            hdrs.update(headers or {})
            extra = self._slo_extra(info) if manifest else {}
            return self.put_object(account, container, name, src.iter_range(),
                                   content_type=content_type or info.content_type,
                                   meta={k: v for k, v in merged.items() if v != ""},
                                   headers=hdrs, delete_at=delete_at, extra=extra,
                                   size=src.size, versioned=versioned)

    # -- versioning (X-Versions-Location: stack; X-History-Location: history) --
    @staticmethod
    def _version_prefix(name: str) -> str:
        return f"{len(name.encode()):03x}{name}/"

    def _archive_current(self, info: ContainerInfo, name: str) -> None:
        """Before an overwrite or delete, copy the current version (if any) to
        the versions container as <len><name>/<timestamp>, as Swift does."""
        target = info.sysmeta.get("versions_location") or info.sysmeta.get("history_location")
        if not target or target == info.name:
            return
        try:
            current = self.head_object(info.account, info.name, name)
        except NotFound:
            return
        try:
            self.copy_object(info.account, info.name, name, info.account, target,
                             self._version_prefix(name) + current.timestamp, manifest=True,
                             versioned=False, delete_at=current.delete_at)
        except NotFound:
            raise Conflict(f"versions container {target} does not exist; create it or "
                           f"remove X-Versions-Location", field="x-versions-location") from None

    def _restore_previous(self, info: ContainerInfo, name: str) -> bool:
        """Stack mode DELETE: the newest archived version becomes current."""
        target = info.sysmeta.get("versions_location")
        if not target:
            return False
        try:
            newest = self.list_objects(info.account, target, Listing(
                prefix=self._version_prefix(name), reverse=True, limit=1))
        except NotFound:
            return False
        if not newest:
            return False
        archived = newest[0].name
        self.copy_object(info.account, target, archived, info.account, info.name, name,
                         manifest=True, versioned=False)
        self.delete_object(info.account, target, archived)
        return True

    def delete_object(self, account: str, container: str, name: str) -> None:
        deleted = self._delete_on_disk(account, container, name)
        if deleted is not None:
            removed = self._unrecord(account, container, name, deleted[1])
            self._check_deleted(name, deleted[0], removed)

    async def delete_object_async(self, account: str, container: str, name: str, *,
                                  check: Callable[[], object] | None = None) -> None:
        """delete_object for an event loop (after `check`, an authorization):
        the tombstones written by the step runner with the other requests'
        (see put_object_async), or in a worker thread when the container
        keeps versions (copies, listings) or a device is remote; the listing
        row awaited."""
        def precheck() -> ContainerInfo:
            if check is not None:
                check()
            check_object(name)
            return self.container_info(account, container)

        def on_disk():
            if check is not None:
                check()
            return self._delete_on_disk(account, container, name)
        info = await self.loop_reads.run(precheck) if self.backend.all_local else None
        if info is not None and self._quick(info):
            ts = now_timestamp()

            def tombstones():
                existed = yield from self.backend.delete_steps(account, container, name, ts)
                return Listed(existed, Remove(account, container, name, ts))
            existed, removed = await self.steps.run(tombstones())
            self._check_deleted(name, existed, removed)
            return
        deleted = await anyio.to_thread.run_sync(on_disk)
        if deleted is not None:
            removed = await self._listings.apply_async(Remove(account, container, name,
                                                              deleted[1]))
            self._check_deleted(name, deleted[0], removed)

    def _delete_on_disk(self, account: str, container: str, name: str) -> tuple[bool, str] | None:
        """Tombstones written: (whether the object existed, their timestamp);
        None when versioning restored an older version instead."""
        check_object(name)
        info = self.container_info(account, container)
        if info.sysmeta.get("history_location"):
            self._archive_current(info, name)
        elif info.sysmeta.get("versions_location") and self._restore_previous(info, name):
            return None
        ts = now_timestamp()
        return self.backend.delete(account, container, name, ts), ts

    @staticmethod
    def _check_deleted(name: str, existed: bool, removed: bool) -> None:
        if not existed and not removed:
            raise NotFound(f"object {name} not found", field="object")

    def _unrecord(self, account: str, container: str, name: str, ts: str) -> bool:
        return self._listings.apply(Remove(account, container, name, ts))

    def expire(self, now: float | None = None, *, limit: int = 1000) -> int:
        """Delete objects whose X-Delete-At has passed; returns how many."""
        now = int(time.time() if now is None else now)
        with self.db.read() as s:
            rows = s.execute(select(Object.account, Object.container, Object.name)
                             .where(Object.delete_at <= now).limit(limit)).all()
        done = 0
        for account, container, name in rows:
            try:
                self.backend.delete(account, container, name, now_timestamp())
            except (NotFound, OlderTimestamp):
                pass
            self._unrecord(account, container, name, now_timestamp())
            done += 1
        return done

    # -- objects: reads ------------------------------------------------------------
    def open_object(self, account: str, container: str, name: str, *,
                    manifest: bool = False) -> OpenObject:
        """Open for reading; NotFound when missing or expired. The caller must
        close() it (or use `with`)."""
        check_object(name)
        reader = self.backend.open(account, container, name)
        try:
            info = ObjectInfo.from_disk(account, container, name, reader.metadata)
            if info.delete_at is not None and info.delete_at <= time.time():
                raise NotFound(f"object {name} not found (expired)", field="object")
            if info.slo and not manifest:
                body = b"".join(reader.read_range())
                return OpenObject(info, reader, self, segments=json.loads(body),
                                  manifest_body=body)
            return OpenObject(info, reader, self)
        except BaseException:
            reader.close()
            raise

    def read_object(self, account: str, container: str, name: str, *,
                    manifest: bool = False) -> tuple[ObjectInfo, bytes]:
        """The whole object in memory, for small objects only (callers check
        head/size first). A replica that fails its etag check while being read
        is quarantined and the next good replica is read instead, so the
        caller never gets corrupt bytes."""
        for _attempt in range(self.backend.replicas + 1):
            with self.open_object(account, container, name, manifest=manifest) as o:
                try:
                    return o.info, b"".join(o.iter_range())
                except Quarantined:
                    continue
        raise NotFound(f"object {name}: no good replica left", field="object")

    def head_object(self, account: str, container: str, name: str) -> ObjectInfo:
        with self.open_object(account, container, name, manifest=False) as o:
            return o.info

    # -- static large objects ---------------------------------------------------
    def put_slo_manifest(self, account: str, container: str, name: str,
                         segments: list[dict], *, content_type: str | None = None,
                         meta: dict | None = None, headers: dict | None = None,
                         delete_at: int | None = None) -> ObjectInfo:
        """Store an SLO manifest. `segments`: [{"path": "/cont/obj",
        "etag": md5 or None, "size_bytes": int or None, "range": optional}]
        as Swift's multipart-manifest=put body. Every segment is checked to
        exist and match; the stored object reads as the concatenation."""
        if not isinstance(segments, list) or not segments:
            raise BadRequest("manifest must be a non-empty JSON list of segments",
                             field="manifest")
        if len(segments) > MAX_MANIFEST_SEGMENTS:
            raise EntityTooLarge(f"manifest has {len(segments)} segments, limit "
                                 f"{MAX_MANIFEST_SEGMENTS}", field="manifest")
        stored, total, etags = [], 0, hashlib.md5(usedforsecurity=False)
        for i, seg in enumerate(segments):
            if not isinstance(seg, dict) or not isinstance(seg.get("path"), str):
                raise BadRequest(f"segment {i}: needs a path /container/object",
                                 field=f"manifest[{i}].path")
            seg_container, _, seg_obj = seg["path"].lstrip("/").partition("/")
            if not seg_container or not seg_obj:
                raise BadRequest(f"segment {i}: path {seg['path']!r} must be "
                                 f"/container/object", field=f"manifest[{i}].path")
            try:
                head = self.head_object(account, seg_container, seg_obj)
            except NotFound:
                raise BadRequest(f"segment {i}: {seg['path']} not found",
                                 field=f"manifest[{i}].path") from None
            want_etag, want_size = seg.get("etag"), seg.get("size_bytes")
            if want_etag and want_etag.strip('"').lower() != head.etag:
                raise BadRequest(f"segment {i}: etag {want_etag} does not match {head.etag}",
                                 field=f"manifest[{i}].etag")
            if want_size is not None and int(want_size) != head.size:
                raise BadRequest(f"segment {i}: size_bytes {want_size} does not match "
                                 f"{head.size}", field=f"manifest[{i}].size_bytes")
            if head.size < MIN_SEGMENT_SIZE and len(segments) > 1:
                raise BadRequest(f"segment {i}: too small", field=f"manifest[{i}]")
            stored.append({"name": "/" + seg_container + "/" + seg_obj, "hash": head.etag,
                           "bytes": head.size, "content_type": head.content_type,
                           "last_modified": head.last_modified.strftime(
                               "%Y-%m-%dT%H:%M:%S.%f")})
            total += head.size
            etags.update(head.etag.encode())
        body = json.dumps(stored, separators=(",", ":")).encode()
        if len(body) > MAX_MANIFEST_SIZE:
            raise EntityTooLarge("manifest is too large", field="manifest")
        return self.put_object(account, container, name, [body], content_type=content_type,
                               meta=meta, headers=headers, delete_at=delete_at,
                               extra={"slo": True, "slo_size": total,
                                      "slo_etag": etags.hexdigest()})

    def delete_slo(self, account: str, container: str, name: str) -> int:
        """multipart-manifest=delete: the segments, then the manifest."""
        with self.open_object(account, container, name) as o:
            segments = o.segments
        if segments is None:
            raise BadRequest("not a static large object manifest", field="multipart-manifest")
        deleted = 0
        for seg in segments:
            c, _, n = seg["name"].lstrip("/").partition("/")
            try:
                self.delete_object(account, c, n)
                deleted += 1
            except NotFound:
                pass
        self.delete_object(account, container, name)
        return deleted + 1

    # -- dynamic large objects --------------------------------------------------------
    def dlo_segments(self, account: str, manifest: str) -> tuple[list[ObjectEntry], str, str]:
        """X-Object-Manifest `container/prefix` -> (segments in name order,
        container, combined etag)."""
        seg_container, _, prefix = manifest.partition("/")
        entries = []
        marker = ""
        while True:
            page = self.list_objects(account, seg_container,
                                     Listing(prefix=prefix, marker=marker, limit=1000))
            objs = [e for e in page if isinstance(e, ObjectEntry)]
            entries += objs
            if len(page) < 1000:
                break
            marker = page[-1].name
        etag = hashlib.md5("".join(e.etag for e in entries).encode(),
                           usedforsecurity=False).hexdigest()
        return entries, seg_container, etag

    def iter_concat(self, account: str, parts: list[tuple[str, str, int, int]]
                    ) -> Iterator[bytes]:
        """Bytes of (container, name, start, end) pieces in order."""
        for container, name, start, end in parts:
            with self.open_object(account, container, name) as o:
                if end > o.size:
                    raise Conflict(f"segment {container}/{name} changed size while being "
                                   f"read", field="segment")
                yield from o.iter_range(start, end)


def _pieces(segments: list[dict], start: int, end: int) -> list[tuple[str, str, int, int]]:
    """(container, name, start, end) of the segment bytes covering [start, end)."""
    out, pos = [], 0
    for seg in segments:
        size = int(seg["bytes"])
        lo, hi = max(start, pos), min(end, pos + size)
        if lo < hi:
            c, _, n = seg["name"].lstrip("/").partition("/")
            out.append((c, n, lo - pos, hi - pos))
        pos += size
        if pos >= end:
            break
    return out


def _merge(old: dict, new: dict | None) -> dict:
    merged = dict(old or {})
    for k, v in (new or {}).items():
        if v is None or v == "" or v == ():
            merged.pop(k, None)
        else:
            merged[k] = list(v) if isinstance(v, tuple) else v
    return merged
