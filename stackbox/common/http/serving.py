"""Serving ASGI apps: what the stackbox process and the object-store workers
share (uvicorn's settings, a graceful stop, the event loop, the allocator)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal

import uvicorn


class Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop, which would kill the
    process before it removes its pidfile; stop gracefully and return instead.
    `signals`: what stops it (an object-store worker obeys only SIGTERM from
    the stackbox process, not the Ctrl-C sent to the whole terminal group)."""

    def __init__(self, config, *, signals=(signal.SIGINT, signal.SIGTERM)):
        super().__init__(config)
        self.signals = signals

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
    cut throughput ~10x (bench/console)."""
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                          timeout_keep_alive=30, server_header=False,
                          ws_per_message_deflate=False)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about twice the requests per CPU-second in a
    boot storm, see bench/metadata), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
