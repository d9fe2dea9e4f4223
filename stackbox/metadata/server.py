"""The metadata server: one asyncio HTTP/1.1 server for every network on the
host, with keep-alive and no connection cap.

Each listening socket belongs to one namespace (see plumbing.py) and carries
a resolver `peer ip -> network id`. The instance is found server-side from
(network, source ip) through the injected `lookup`; nothing a guest sends in
a header is trusted to say who it is. Documents are built once per instance
and cached for a few seconds, so a booting guest's ~30 requests cost one
lookup.

The HTTP part is a small protocol on purpose: the requests are tiny GETs,
and a general framework costs several times the CPU per request (measured
in bench/metadata).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import formatdate

from stackbox.common.http.serving import new_event_loop  # noqa: F401 (bench/, tests use it here)
from stackbox.metadata import content, tokens
from stackbox.metadata.content import Documents, InstanceMetadata

log = logging.getLogger("stackbox.metadata")

Lookup = Callable[[str, str], "InstanceMetadata | None"]
Resolver = Callable[[str], "tuple[str, ...]"]

MAX_HEAD = 16 * 1024
MAX_BODY = 4096
IDLE_SECONDS = 60.0
BACKLOG = 65535
LOOKUP_BATCH = 128
MIN_COLD_SLICE = 0.02          # seconds of queued lookups per loop iteration, at least
COLD_SHARE = 3                 # a backlog of lookups gets 3/4 of the loop
GATHER_SECONDS = 0.01          # on the loop, a lookup waits this long for others to batch with
ACCEPT_BATCH = BACKLOG         # connections accepted per readiness of a listener

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
            413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 505: "HTTP Version Not Supported"}


class NetworkResolver:
    """peer ip -> the networks the guest may be on, for one namespace.

    A DHCP namespace serves one network: every source belongs to it. A
    router namespace joins several networks whose subnets never overlap
    (Neutron refuses that), so the source address picks the network when the
    subnets are known; networks given without subnets are all candidates,
    and the instance lookup decides (at most one has a port with that
    address). A spoofed source cannot complete the TCP handshake: the
    SYN-ACK is routed to the real owner's network."""

    def __init__(self, networks: Mapping[str, Iterable[str]] | str):
        if isinstance(networks, str):
            networks = {networks: ()}
        self.networks = {net: tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
                         for net, cidrs in networks.items()}
        self._anywhere = tuple(net for net, cidrs in self.networks.items() if not cidrs)

    def __call__(self, ip: str) -> tuple[str, ...]:
        addr = ipaddress.ip_address(ip)
        matched = tuple(net for net, cidrs in self.networks.items()
                        if any(addr in c for c in cidrs))
        return matched[:1] + self._anywhere


class MetadataServer:
    """Serve instance metadata on any number of listening sockets.

    lookup(network_id, ip) -> InstanceMetadata | None may be a plain function
    run in worker threads (it may query the database; `lookup_in_thread`),
    a plain function called on the event loop (`lookup_in_thread=False`: it
    must not block, e.g. reads an in-memory index or a local SQLite
    database), or a coroutine function. A plain lookup with a `many` method
    gets the queued lookups in batches, in the threads or on the loop.
    `cache_seconds` bounds how stale a document can be."""

    def __init__(self, lookup: Lookup, *, cache_seconds: float = 5.0,
                 negative_cache_seconds: float = 1.0, require_token: bool = False,
                 token_key: bytes | None = None, idle_seconds: float = IDLE_SECONDS,
                 lookup_workers: int = 2, lookup_in_thread: bool = True):
        self._lookup = lookup
        self._async_lookup = inspect.iscoroutinefunction(lookup)
        # lookup.many(network_id, ips) -> {ip: InstanceMetadata}, when the
        # lookup has it: a batch of queued lookups then costs a few queries
        # instead of a few per instance (the cold path of a boot storm).
        self._many = None if self._async_lookup else getattr(lookup, "many", None)
        self.cache_seconds = cache_seconds
        self.negative_cache_seconds = negative_cache_seconds
        self.require_token = require_token
        self.token_key = token_key or tokens.new_key()
        self.idle_seconds = idle_seconds
        self._cache: dict[tuple[str, str], tuple[float, Documents | None]] = {}
        self._built: dict[tuple[str, str], tuple[InstanceMetadata, Documents]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future] = {}
        # Lookups someone waits for (a first request) go before refreshes
        # (the connection answers from its documents meanwhile): in a long
        # storm every connection refreshes every cache_seconds, and in one
        # queue the refreshes delayed the first answers.
        self._queue: collections.deque[tuple[str, str]] = collections.deque()
        self._refresh_queue: collections.deque[tuple[str, str]] = collections.deque()
        self._loaders = 0
        self._draining_on_loop = False
        self._drained_at: float | None = None
        self.lookup_workers = lookup_workers
        self.lookup_in_thread = lookup_in_thread
        self._listeners: dict[str, socket.socket] = {}
        self._accept_warned: dict[str, float] = {}
        self._resolvers: dict[str, Resolver] = {}
        self._conns: set[_Connection] = set()
        self._sweeper: asyncio.Task | None = None
        self._date = (0, b"")
        self.stats = {"requests": 0, "lookups": 0, "connections": 0, "errors": 0}

    # --- listeners ------------------------------------------------------------

    async def add_listener(self, name: str, sock, resolve: Resolver, *,
                           backlog: int = BACKLOG) -> None:
        """Serve on an already bound and listening socket (e.g. one made in
        a namespace). Replaces a listener of the same name."""
        await self.remove_listener(name)
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        # A large backlog: with asyncio's default (100) a boot storm
        # overflowed the accept queue and guests waited for SYN
        # retransmissions (1, 3, 7, 15 s). The kernel caps it at the
        # namespace's somaxconn, which the plumbing raises.
        sock.listen(backlog)
        self._resolvers[name] = resolve
        self._listeners[name] = sock
        # We accept, not loop.create_server: libuv (uvloop) accepts one
        # connection per loop iteration since 1.45, and with 10,000
        # connections an iteration takes ~0.5 s, so the last connections of
        # a storm waited in the accept queue for 30 s and more (measured:
        # ~70 left in the queue, drained at 2 a second).
        loop.add_reader(sock.fileno(), self._accept, name, sock)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def listen_tcp(self, name: str, host: str, port: int, resolve: Resolver,
                         *, backlog: int = BACKLOG) -> tuple[str, int]:
        """Listen in this process's namespace (tests, or a host without
        namespaces); returns the bound address."""
        import socket
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        await self.add_listener(name, sock, resolve, backlog=backlog)
        return sock.getsockname()[:2]

    def set_resolver(self, name: str, resolve: Resolver) -> None:
        """New networks behind an existing listener (a router gained or lost
        an interface); open connections keep the network they resolved to."""
        self._resolvers[name] = resolve

    def _accept(self, name: str, sock: socket.socket) -> None:
        """Accept every waiting connection (up to ACCEPT_BATCH) at once."""
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:            # e.g. EMFILE: try again next iteration
                now = time.monotonic()
                if now - self._accept_warned.get(name, -60.0) >= 60.0:   # not every iteration
                    self._accept_warned[name] = now
                    log.warning("metadata listener %s cannot accept: %s", name, e)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(
                lambda: _Connection(self, name), conn))
            task.add_done_callback(_accepted)

    async def remove_listener(self, name: str) -> None:
        self._resolvers.pop(name, None)
        sock = self._listeners.pop(name, None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            # Connections of that listener keep their namespace alive: close them.
            for conn in [c for c in self._conns if c.listener == name]:
                conn.transport.close()

    def listeners(self) -> list[str]:
        return sorted(self._listeners)

    async def close(self) -> None:
        for name in list(self._listeners):
            await self.remove_listener(name)
        for conn in list(self._conns):
            conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- documents ------------------------------------------------------------

    def cached(self, key: tuple[str, str], now: float) -> tuple[float, Documents | None] | None:
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit
        return None

    async def documents(self, network_id: str, ip: str, *, refresh: bool = False
                        ) -> tuple[float, Documents | None]:
        """(expiry, documents or None) for the instance at (network, ip);
        concurrent misses for one instance share a single lookup."""
        key = (network_id, ip)
        hit = self.cached(key, time.monotonic())
        if hit is not None:
            return hit
        if self.inline:
            self.stats["lookups"] += 1
            try:
                instance = self._lookup(*key)
                outcome = self._documents_for(key, instance)
            except Exception:
                log.exception("metadata lookup failed for network %s ip %s", *key)
                raise
            self._finish(key, outcome)
            return self._cache[key]
        future = self._pending.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[key] = future
            self.stats["lookups"] += 1
            if self._async_lookup:
                asyncio.ensure_future(self._load_async(key))
            elif not self.lookup_in_thread:
                (self._refresh_queue if refresh else self._queue).append(key)
                if not self._draining_on_loop:
                    # A short wait gathers the lookups of instances booting
                    # one after another into one batch: a batch costs about
                    # ten queries (~2 ms) however small it is, and one per
                    # instance cost more CPU than serving its 40 requests.
                    self._draining_on_loop = True
                    asyncio.get_running_loop().call_later(GATHER_SECONDS,
                                                          self._drain_on_loop)
            else:
                (self._refresh_queue if refresh else self._queue).append(key)
                if self._loaders < self.lookup_workers:
                    self._loaders += 1
                    asyncio.ensure_future(self._drain())
        return await asyncio.shield(future)

    async def _load_async(self, key: tuple[str, str]) -> None:
        try:
            instance = await self._lookup(*key)
            outcome = self._documents_for(key, instance)
        except Exception as e:
            log.exception("metadata lookup failed for network %s ip %s", *key)
            outcome = e
        self._finish(key, outcome)

    async def _drain(self) -> None:
        """Run queued lookups in worker threads, many per hop. One hop per
        lookup would stall a boot storm: a worker thread gets the GIL back
        from a busy event loop only every switch interval (5 ms), so 10,000
        cold instances would wait 50 s for their first answer."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue or self._refresh_queue:
                batch = self._next_batch()
                try:
                    outcomes = await loop.run_in_executor(None, self._lookup_many, batch)
                except Exception as e:              # the executor itself failed
                    outcomes = [e] * len(batch)
                # Build on the loop: a worker thread holding the GIL for
                # pure-Python work gets it back only every switch interval
                # from a busy loop (measured: 90 % of its time waiting).
                self._deliver(batch, outcomes)
        finally:
            self._loaders -= 1

    def _drain_on_loop(self) -> None:
        """Queued lookups on the loop, in batches, for COLD_SHARE times as
        long as the loop spent on everything else since the last call (at
        least MIN_COLD_SLICE), then again in the next iteration: the
        connections' reads and writes run in between, and a backlog of first
        requests gets most of the loop (with 10,000 connections an iteration
        takes ~0.5 s: a fixed 128 lookups per iteration made the last of
        10,000 first answers wait ~40 s). Refreshes alone get
        MIN_COLD_SLICE per iteration: while the server is saturated they
        lag (documents may then be older than cache_seconds), first answers
        do not.

        For a local database (SQLite in WAL mode: readers never wait for
        writers) this beats worker threads by far in a storm: a worker's
        every row read releases the GIL, and getting it back from a busy
        loop takes up to the switch interval (5 ms); measured at 10,000
        instances, first answers 18-85 s in threads."""
        started = time.perf_counter()
        others = started - self._drained_at if self._drained_at is not None else 0.0
        # Refreshes alone get a short slice: nobody waits for them, and in
        # a long storm every connection refreshes every cache_seconds.
        share = COLD_SHARE if self._queue else 0.0
        deadline = started + max(MIN_COLD_SLICE, share * others)
        while self._queue or self._refresh_queue:
            batch = self._next_batch()
            self._deliver(batch, self._lookup_many(batch))
            if time.perf_counter() >= deadline:
                break
        if self._queue or self._refresh_queue:
            self._drained_at = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._drain_on_loop)
        else:
            self._draining_on_loop = False
            self._drained_at = None

    def _next_batch(self) -> list[tuple[str, str]]:
        """Up to LOOKUP_BATCH queued keys, waited-for ones first."""
        batch: list[tuple[str, str]] = []
        for queue in (self._queue, self._refresh_queue):
            while queue and len(batch) < LOOKUP_BATCH:
                batch.append(queue.popleft())
        return batch

    def _deliver(self, batch: list[tuple[str, str]], outcomes: list) -> None:
        for key, outcome in zip(batch, outcomes):
            if isinstance(outcome, InstanceMetadata):
                try:
                    outcome = self._documents_for(key, outcome)
                except Exception as e:
                    log.exception("building metadata failed for %s %s", *key)
                    outcome = e
            self._finish(key, outcome)

    def _documents_for(self, key: tuple[str, str], instance: InstanceMetadata | None
                       ) -> Documents | None:
        """Build the documents, or reuse the last ones when the instance did
        not change: a refresh then costs a lookup, not a build (in a long
        storm every connection refreshes every cache_seconds)."""
        if instance is None:
            self._built.pop(key, None)
            return None
        last = self._built.get(key)
        if last is not None and last[0] == instance:
            return last[1]
        docs = content.build(instance)
        self._built[key] = (instance, docs)
        return docs

    def _lookup_many(self, keys: list[tuple[str, str]]) -> list:
        if self._many is not None:
            return self._lookup_batched(keys)
        outcomes: list = []
        for key in keys:
            try:
                outcomes.append(self._lookup(*key))
            except Exception as e:
                log.exception("metadata lookup failed for network %s ip %s", *key)
                outcomes.append(e)
        return outcomes

    def _lookup_batched(self, keys: list[tuple[str, str]]) -> list:
        """One `lookup.many` call per network among `keys`; an address it
        does not return has no instance (None)."""
        by_network: dict[str, list[str]] = {}
        for network_id, ip in keys:
            by_network.setdefault(network_id, []).append(ip)
        found: dict[tuple[str, str], object] = {}
        for network_id, ips in by_network.items():
            try:
                answer = self._many(network_id, ips)
            except Exception as e:
                log.exception("metadata lookup failed for network %s (%d addresses)",
                              network_id, len(ips))
                found.update(((network_id, ip), e) for ip in ips)
                continue
            found.update(((network_id, ip), answer.get(ip)) for ip in ips)
        return [found[key] for key in keys]

    def _finish(self, key: tuple[str, str], outcome) -> None:
        future = self._pending.pop(key, None)
        if isinstance(outcome, Exception):
            if future is not None and not future.done():
                future.set_exception(outcome)
                future.exception()       # mark retrieved: every waiter gets its 500
            return
        ttl = self.cache_seconds if outcome is not None else self.negative_cache_seconds
        entry = (time.monotonic() + ttl, outcome)
        self._cache[key] = entry
        if future is not None and not future.done():
            future.set_result(entry)

    @property
    def inline(self) -> bool:
        """The lookup runs on the loop one instance at a time (no task
        needed); a lookup with `many` is batched instead."""
        return not self._async_lookup and not self.lookup_in_thread and self._many is None

    def find_now(self, candidates: tuple[str, ...], ip: str
                 ) -> tuple[str | None, tuple[float, Documents | None]]:
        """`find` for an inline lookup, without a task."""
        entry: tuple[float, Documents | None] = (0.0, None)
        now = time.monotonic()
        for network_id in candidates:
            key = (network_id, ip)
            entry = self.cached(key, now)
            if entry is None:
                self.stats["lookups"] += 1
                self._finish(key, self._documents_for(key, self._lookup(*key)))
                entry = self._cache[key]
            if entry[1] is not None:
                return network_id, entry
        return None, entry

    async def find(self, candidates: tuple[str, ...], ip: str
                   ) -> tuple[str | None, tuple[float, Documents | None]]:
        """The first candidate network with an instance at `ip`."""
        entry: tuple[float, Documents | None] = (0.0, None)
        for network_id in candidates:
            entry = await self.documents(network_id, ip)
            if entry[1] is not None:
                return network_id, entry
        return None, entry

    def invalidate(self, network_id: str | None = None, ip: str | None = None) -> None:
        """Forget cached documents (all, a network's, or one instance's)."""
        for cache in (self._cache, self._built):
            for key in list(cache):
                if (network_id is None or key[0] == network_id) and (ip is None or key[1] == ip):
                    del cache[key]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.idle_seconds / 2))
            now = time.monotonic()
            for key in [k for k, v in self._cache.items() if v[0] <= now]:
                del self._cache[key]
            # Connections may still serve (and refresh) their documents;
            # keep what was built for an instance with an open connection.
            live = {(c.network, c.ip) for c in self._conns}
            for key in [k for k in self._built if k not in self._cache and k not in live]:
                del self._built[key]
            idle_before = now - self.idle_seconds
            for conn in [c for c in self._conns if c.last_active < idle_before]:
                conn.transport.close()

    def date_header(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


def _accepted(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("metadata connection setup failed: %s", task.exception())


class _Request:
    __slots__ = ("method", "path", "version", "headers")

    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]):
        self.method, self.path, self.version, self.headers = method, path, version, headers


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Connection(asyncio.Protocol):
    """One client connection: parse requests in order (pipelining keeps the
    order), answer each from the instance's documents."""

    def __init__(self, server: MetadataServer, listener: str):
        self.server = server
        self.listener = listener
        self.buffer = b""
        self.waiting = False
        self.refreshing = False
        self.write_paused = False
        self.closing = False
        self.docs: Documents | None = None
        self.expiry = 0.0
        self.last_active = time.monotonic()

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"
        if self.ip.startswith("::ffff:"):
            self.ip = self.ip[7:]
        self.network: str | None = None
        try:
            self.candidates = self.server._resolvers[self.listener](self.ip)
        except (ValueError, KeyError):
            self.candidates = ()
        self.server._conns.add(self)
        self.server.stats["connections"] += 1
        if self.listener not in self.server._listeners:
            transport.close()          # accepted just before its listener went

    def connection_lost(self, exc) -> None:
        self.server._conns.discard(self)
        self.closing = True

    # A client that pipelines requests without reading the answers must not
    # grow our write buffer without bound: stop reading until it drains.
    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.waiting and not self.closing:
            self.transport.resume_reading()
            self._process()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()
        if not self.waiting:
            self._process()

    # --- request loop ---------------------------------------------------------

    def _process(self) -> None:
        while self.buffer and not self.closing and not self.write_paused:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._fail(431, "request head too large")
                return
            try:
                request, consumed = self._parse(end)
            except _HttpError as e:
                self._fail(e.status, e.message)
                return
            if consumed > len(self.buffer):
                return                          # body not complete yet
            if self.candidates and self.expiry <= time.monotonic():
                if self.docs is not None:
                    # Known instance: answer from what we have and refresh in
                    # the background. Blocking here would let a lookup backlog
                    # longer than the cache lifetime stall every connection
                    # again and again (measured: a 10,000-instance storm
                    # collapsed). A new guest on this address comes with a new
                    # connection, which never sees these documents.
                    self._refresh()
                else:
                    hit = (self.server.cached((self.candidates[0], self.ip), time.monotonic())
                           if len(self.candidates) == 1 else None)
                    if hit is None and self.server.inline:
                        # No task, no pause: with thousands of connections one
                        # loop iteration takes long, and a first request that
                        # needs two more of them waited seconds in a storm.
                        try:
                            network, hit = self.server.find_now(self.candidates, self.ip)
                        except Exception:
                            self.server.stats["errors"] += 1
                            self._fail(500, "metadata lookup failed")
                            return
                        self.candidates = (network,) if network else self.candidates
                    if hit is None:
                        self._wait_for_documents()
                        return
                    self.expiry, self.docs = hit
                    self.network = self.candidates[0] if hit[1] is not None else None
            self.buffer = self.buffer[consumed:]
            self._respond(request)

    def _refresh(self) -> None:
        if self.refreshing:
            return
        self.refreshing = True
        task = asyncio.ensure_future(self.server.documents(self.network, self.ip,
                                                           refresh=True))
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Future) -> None:
        self.refreshing = False
        if task.cancelled() or task.exception() is not None:
            self.expiry = time.monotonic() + self.server.negative_cache_seconds
            return
        self.expiry, docs = task.result()
        self.docs = docs                  # None: the instance is gone -> 404 from now on
        if docs is None:
            self.network = None

    def _wait_for_documents(self) -> None:
        self.waiting = True
        self.transport.pause_reading()
        task = asyncio.ensure_future(self.server.find(self.candidates, self.ip))
        task.add_done_callback(self._documents_ready)

    def _documents_ready(self, task: asyncio.Future) -> None:
        self.waiting = False
        if self.closing:
            return
        if not self.write_paused:
            self.transport.resume_reading()
        if task.cancelled() or task.exception() is not None:
            self.server.stats["errors"] += 1
            self._fail(500, "metadata lookup failed")
            return
        self.network, (self.expiry, self.docs) = task.result()
        if self.network is not None:
            self.candidates = (self.network,)     # the guest's network does not change
        self._process()

    def _parse(self, end: int) -> tuple[_Request, int]:
        head = self.buffer[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _HttpError(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _HttpError(411, "chunked bodies are not accepted; send Content-Length")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise _HttpError(400, "Content-Length must be a non-negative integer")
        if int(length) > MAX_BODY:
            raise _HttpError(413, f"request body larger than {MAX_BODY} bytes")
        return _Request(method, target, version, headers), end + 4 + int(length)

    # --- responses ------------------------------------------------------------

    def _respond(self, req: _Request) -> None:
        self.server.stats["requests"] += 1
        conn_header = req.headers.get("connection", "").lower()
        keep = (conn_header != "close") if req.version == "HTTP/1.1" else (conn_header == "keep-alive")
        status, body, ctype, extra = self._handle(req)
        self._send(status, body, ctype, keep, head_only=req.method == "HEAD",
                   extra=extra, http10_keep=keep and req.version == "HTTP/1.0")
        if not keep:
            self.closing = True
            self.transport.close()

    def _handle(self, req: _Request) -> tuple[int, bytes, bytes, bytes]:
        path = content.normalize(req.path)
        if self.docs is None:
            return 404, b"Not Found: no instance with this address on this network\n", b"text/plain", b""
        if path.endswith("api/token") and path.split("/")[0] in content.EC2_VERSIONS:
            return self._token(req)
        if req.method not in ("GET", "HEAD"):
            return 405, b"Method Not Allowed: use GET\n", b"text/plain", b"Allow: GET, HEAD\r\n"
        token = req.headers.get(tokens.TOKEN_HEADER)
        # require_token guards the EC2 tree (IMDSv2-only); the OpenStack tree
        # has no token protocol and cloud-init reads it without one.
        if token is not None or (self.server.require_token and not path.startswith("openstack")):
            if token is None or not tokens.valid(self.server.token_key, token, self.network,
                                                 self.ip, time.time()):
                return 401, b"Unauthorized: missing, expired or foreign token\n", b"text/plain", b""
        body = self.docs.paths.get(path)
        if body is None:
            return 404, b"Not Found\n", b"text/plain", b""
        ctype = b"application/json" if path.endswith(".json") else b"text/plain"
        return 200, body, ctype, b""

    def _token(self, req: _Request) -> tuple[int, bytes, bytes, bytes]:
        if req.method != "PUT":
            return 405, b"Method Not Allowed: PUT a token request\n", b"text/plain", b"Allow: PUT\r\n"
        # EC2 refuses token requests that went through a proxy: an SSRF
        # through a forwarding proxy then cannot obtain a token.
        if "x-forwarded-for" in req.headers:
            return 403, b"Forbidden: token requests through a proxy are refused\n", b"text/plain", b""
        try:
            ttl = tokens.parse_ttl(req.headers.get(tokens.TTL_HEADER))
        except tokens.TokenError as e:
            return 400, f"Bad Request: {e}\n".encode(), b"text/plain", b""
        token = tokens.issue(self.server.token_key, self.network, self.ip, ttl, time.time())
        return 200, token.encode(), b"text/plain", f"X-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n".encode()

    def _send(self, status: int, body: bytes, ctype: bytes, keep: bool, *,
              head_only: bool = False, extra: bytes = b"", http10_keep: bool = False) -> None:
        if status >= 500:
            self.server.stats["errors"] += 1
        conn = b"Connection: keep-alive\r\n" if http10_keep else (b"" if keep else b"Connection: close\r\n")
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
                b"Server: stackbox-metadata\r\n%s%s\r\n") % (
            status, _REASONS[status].encode(), ctype, len(body),
            self.server.date_header(), conn, extra)
        self.transport.write(head if head_only else head + body)

    def _fail(self, status: int, message: str) -> None:
        self._send(status, f"{_REASONS[status]}: {message}\n".encode(), b"text/plain", False)
        self.closing = True
        self.transport.close()


class MetadataThread:
    """Runs a MetadataServer on its own event loop in a daemon thread, so a
    boot storm never queues behind (or delays) the API's event loop.

        server = MetadataServer(lookup)
        runner = MetadataThread(server)          # started
        plumbing = MetadataPlumbing(server, runner.loop)
        ...
        runner.stop()
    """

    def __init__(self, server: MetadataServer, *, name: str = "metadata"):
        import threading
        self.server = server
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30) -> None:
        if not self.thread.is_alive():
            return
        self.call(self.server.close(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        self.loop.close()
