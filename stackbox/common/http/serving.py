"""Serving ASGI apps: what the stackbox process and the object-store workers
share (uvicorn's settings, a graceful stop, the event loop, the allocator)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import mmap
import os
import select
import signal
import socket
import struct
import threading
import time

import uvicorn

from stackbox.common.http.zerocopy import ZeroCopyProtocol

log = logging.getLogger("stackbox.http")

ACCEPT_WAIT = 0.5      # seconds an accept thread waits before checking whether to stop
DEFER_STEP = 0.001     # while a process holds more connections than another and one
MAX_DEFER = 0.02       # waits, it looks again this often before accepting, at most this long


class Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop, which would kill the
    process before it removes its pidfile; stop gracefully and return instead.
    `signals`: what stops it (an object-store worker obeys only SIGTERM from
    the stackbox process, not the Ctrl-C sent to the whole terminal group).

    `shared`: listening sockets that several processes serve (the
    object-store port, see stackbox.objectstore.workers). Each is accepted
    by a thread of its own (SharedAccept) instead of the event loop, so the
    connections are dealt out in turn between the processes."""

    def __init__(self, config, *, signals=(signal.SIGINT, signal.SIGTERM),
                 shared: tuple[socket.socket, ...] = (), shares: ConnectionShares | None = None):
        super().__init__(config)
        self.signals = signals
        self.shared, self.shares = shared, shares
        self._accepters: list[SharedAccept] = []

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in self.signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in self.signals:
                loop.remove_signal_handler(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        own = None if sockets is None else [s for s in sockets if s not in self.shared]
        await super().startup(sockets=own)
        if self.should_exit:
            return
        config = self.config
        protocol = functools.partial(config.http_protocol_class, config=config,
                                     server_state=self.server_state,
                                     app_state=self.lifespan.state)
        loop = asyncio.get_running_loop()
        for sock in self.shared:
            accepter = SharedAccept(sock, loop, protocol, self.shares)
            accepter.start()
            self._accepters.append(accepter)
            log.info("accepting connections on shared port %d", sock.getsockname()[1])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for accepter in self._accepters:
            accepter.stop()
        await super().shutdown(sockets=sockets)
        await asyncio.to_thread(lambda: [a.join() for a in self._accepters])


class ConnectionShares:
    """How many connections each process sharing a listening socket holds:
    one 8-byte slot per process in a file they all map. A process that
    holds more than the least busy one lets that one accept first
    (SharedAccept), so keep-alive connections end up evenly spread. A torn
    or stale count only skews one decision, and a process never waits
    longer than MAX_DEFER for another."""

    _SLOT = struct.Struct("=q")

    def __init__(self, path, slot: int, processes: int, *, create: bool = False):
        if not 0 <= slot < processes:
            raise ValueError(f"slot {slot} is not one of {processes} processes")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if create else 0), 0o600)
        try:
            size = self._SLOT.size * processes
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.slot, self.processes = slot, processes
        self._lock = threading.Lock()
        self._SLOT.pack_into(self._map, slot * self._SLOT.size, 0)    # a restarted process

    def counts(self) -> list[int]:
        return [self._SLOT.unpack_from(self._map, i * self._SLOT.size)[0]
                for i in range(self.processes)]

    def add(self, n: int) -> None:
        with self._lock:
            at = self.slot * self._SLOT.size
            self._SLOT.pack_into(self._map, at, self._SLOT.unpack_from(self._map, at)[0] + n)

    def ahead(self) -> bool:
        counts = self.counts()
        return counts[self.slot] > min(counts)

    def close(self) -> None:
        self._map.close()


class SharedAccept(threading.Thread):
    """Accepts the connections of a listening socket that several processes
    share, in a thread that waits in accept() itself.

    An event loop watching the socket (epoll) is woken together with every
    other process's loop, and the first to run takes every connection
    waiting, often all of a client's connections at once: a benchmark's 16
    keep-alive connections all went to one of two object-store processes,
    which did all the work while the other idled. Threads blocked in
    accept() are woken one per connection, in the order they began to wait;
    and a process that holds more connections than another (ConnectionShares)
    waits a moment before accepting, so a burst of connections is dealt out
    evenly too. Each connection is then handed to the event loop
    (connect_accepted_socket) and served as usual.

    The socket stays in blocking mode with a receive timeout (SO_RCVTIMEO,
    which bounds accept()), so the thread notices stop() in time."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, protocol,
                 shares: ConnectionShares | None = None):
        super().__init__(name=f"sbx-accept-{sock.getsockname()[1]}", daemon=True)
        self.sock, self.loop, self.shares = sock, loop, shares
        self._protocol = protocol
        self._stopping = threading.Event()
        self._pending = select.poll()       # readable: a connection waits to be accepted
        self._pending.register(sock.fileno(), select.POLLIN)
        sock.setblocking(True)
        sec = int(ACCEPT_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", sec, int((ACCEPT_WAIT - sec) * 1e6)))

    def stop(self) -> None:
        self._stopping.set()

    def _defer(self) -> None:
        """Let a process with fewer connections take the next one waiting
        (none waiting: go and wait in accept() like the others)."""
        waited = 0.0
        while (waited < MAX_DEFER and not self._stopping.is_set() and self.shares.ahead()
               and self._pending.poll(0)):
            time.sleep(DEFER_STEP)
            waited += DEFER_STEP

    def run(self) -> None:
        while not self._stopping.is_set():
            if self.shares is not None:
                self._defer()
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue            # the wait ran out (or the client gave up): look again
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                    return          # the socket was closed
                log.warning("accept on port %s failed: %s", self.sock.getsockname()[1], exc)
                time.sleep(0.1)     # out of file descriptors, say: give others a chance
                continue
            if self._stopping.is_set():
                conn.close()
                return
            conn.setblocking(False)
            if self.shares is not None:
                self.shares.add(1)
            try:
                self.loop.call_soon_threadsafe(self._adopt, conn)
            except RuntimeError:     # the loop is closed
                self._lost(conn)
                return

    def _lost(self, conn: socket.socket) -> None:
        conn.close()
        if self.shares is not None:
            self.shares.add(-1)

    def _protocol_counted(self):
        protocol = self._protocol()
        if self.shares is not None:
            lost = protocol.connection_lost

            def connection_lost(exc):
                self.shares.add(-1)
                lost(exc)
            protocol.connection_lost = connection_lost
        return protocol

    def _adopt(self, conn: socket.socket) -> None:
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(self._protocol_counted, conn))
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None
                               or self._lost(conn))


def return_big_allocations_to_the_os() -> None:
    """Password checks allocate 16 MiB each (scrypt); glibc's adaptive mmap
    threshold would keep those in the heap for good. A fixed threshold makes
    every large block an mmap that is unmapped when freed, so RSS falls back.

    A fixed mmap threshold also freezes the trim threshold at 128 KiB: then
    every freed buffer at the top of the heap (an HTTP body's 256 KiB reads,
    object chunks) went back to the OS and was faulted in again by the next
    one, about half of the kernel time of a large upload. Up to 16 MiB of free
    heap is kept instead; big blocks are still mmapped and returned."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 * 1024 * 1024)   # M_MMAP_THRESHOLD: 1 MiB chunks stay in the heap
        libc.mallopt(-1, 16 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def uvicorn_config(app) -> uvicorn.Config:
    """uvicorn's settings for every API port (the stackbox process and the
    object-store workers). No permessage-deflate: the console proxy's
    websockets carry VNC data that is mostly compressed already; deflating it
    cut throughput ~10x (bench/console). httptools with ASGI's zero-copy send
    (sendfile for big object GETs, zerocopy.py)."""
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                          timeout_keep_alive=30, server_header=False,
                          ws_per_message_deflate=False, http=ZeroCopyProtocol)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about twice the requests per CPU-second in a
    boot storm, see bench/metadata), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
