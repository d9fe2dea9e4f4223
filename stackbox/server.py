"""The stackbox process: every API in one process, one event loop, one
uvicorn server listening on each service's port."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import uvicorn

from stackbox import __version__
from stackbox.common import registry
from stackbox.common.config import Settings
from stackbox.common.db import Database, utcnow
from stackbox.common.http.app import PortDispatcher
from stackbox.identity.api import build_app as build_identity_app
from stackbox.identity.service import IdentityService
from stackbox.image.api import build_app as build_image_app
from stackbox.image.drivers.local import LocalStore
from stackbox.image.service import ImageService
from stackbox.objectstore.api import build_app as build_objectstore_app
from stackbox.objectstore.auditor import Auditor
from stackbox.objectstore.replicator import Replicator
from stackbox.objectstore.bootstrap import build_service as build_objectstore
from stackbox.objectstore.s3.api import build_s3_app, object_store_dispatcher, s3_settings
from stackbox.objectstore.s3.store import ServiceStore

log = logging.getLogger("stackbox.server")

HEARTBEAT_SECONDS = 10


def pidfile(data_dir: Path) -> Path:
    return data_dir / "stackbox.pid"


def bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections
    # only when the listening socket says so; without it every keep-alive
    # response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class Cloud:
    """The services of one stackbox process, built from settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings.database_url)
        self.identity = IdentityService(self.db, settings)
        self.image = ImageService(self.db, settings, LocalStore(settings.data_dir / "images"))
        self.objectstore = build_objectstore(self.db, settings)
        self.started_at = utcnow()

    def prepare(self) -> None:
        self.identity.keys.ensure_key()
        self.identity.auth.revocations.load()

    def apps(self) -> dict[int, object]:
        auth_url = lambda: self.settings.base_url("identity") + "/v3"  # noqa: E731
        return {self.settings.identity.port: build_identity_app(self.identity,
                                                                auth_url=auth_url),
                self.settings.image.port: build_image_app(self.image, validator=self.identity),
                self.settings.object_store.port: object_store_dispatcher(
                    build_objectstore_app(self.objectstore, validator=self.identity),
                    build_s3_app(ServiceStore(self.objectstore), self.identity,
                                 **s3_settings(self.settings)))}

    async def object_daemons(self, stop: asyncio.Event) -> None:
        """Object auditor and replicator passes, each in a worker thread at a
        bounded rate, one after the other."""
        cfg = self.settings.object_store
        backend = self.objectstore.backend
        daemons = [("replicator", Replicator(backend), cfg.replicator_interval)]
        if cfg.auditor_bytes_per_second:
            auditor = Auditor(backend, bytes_per_second=cfg.auditor_bytes_per_second)
            daemons.append(("auditor", auditor, cfg.auditor_interval))
        await asyncio.gather(*(self._repeat(stop, name, d.run_pass, every)
                               for name, d, every in daemons))

    @staticmethod
    async def _repeat(stop: asyncio.Event, name: str, run_pass, every: float) -> None:
        halt = threading.Event()
        while not stop.is_set():
            task = asyncio.ensure_future(asyncio.to_thread(run_pass, halt))
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                halt.set()
                await asyncio.gather(task, return_exceptions=True)
                return
            waiter.cancel()
            try:
                task.result()
            except Exception:
                log.exception("object %s pass failed; retrying", name)
            try:
                await asyncio.wait_for(stop.wait(), every)
            except asyncio.TimeoutError:
                pass

    async def expirer(self, stop: asyncio.Event) -> None:
        """Removes objects whose X-Delete-At has passed (GET and listings hide
        them already; this frees the space and fixes the counters)."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.objectstore.expire)
            except Exception:
                log.exception("object expirer pass failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), self.settings.object_store.expirer_interval)
            except asyncio.TimeoutError:
                pass

    async def housekeeping(self, stop: asyncio.Event) -> None:
        """Heartbeat for `stackbox status`, and signing-key rotation."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(registry.heartbeat, self.db, binary="stackbox-api",
                                        version=__version__, started_at=self.started_at)
                await asyncio.to_thread(self.identity.keys.ensure_key)
            except Exception:
                log.exception("housekeeping pass failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)
            except asyncio.TimeoutError:
                pass


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop, which would kill the
    process before it removes its pidfile; stop gracefully and return instead."""

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _return_big_allocations_to_the_os() -> None:
    """Password checks allocate 16 MiB each (scrypt); glibc's adaptive mmap
    threshold would keep those in the heap for good. A fixed threshold makes
    every large block an mmap that is unmapped when freed, so RSS falls back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    _return_big_allocations_to_the_os()
    cloud = Cloud(settings)
    cloud.prepare()
    if sockets is None:
        sockets = [bind(settings.api.bind_address, p)
                   for p in settings.service_ports().values()]
    config = uvicorn.Config(PortDispatcher(cloud.apps()), log_config=None, access_log=False,
                            lifespan="off", timeout_keep_alive=30, server_header=False)
    server = _Server(config)
    pid_path = pidfile(settings.data_dir)
    pid_path.write_text(f"{os.getpid()}\n")

    async def main():
        stop = asyncio.Event()
        chores = [asyncio.create_task(cloud.housekeeping(stop)),
                  asyncio.create_task(cloud.expirer(stop)),
                  asyncio.create_task(cloud.object_daemons(stop))]
        try:
            await server.serve(sockets=sockets)
        finally:
            stop.set()
            await asyncio.gather(*chores)

    try:
        log.info("stackbox %s serving %s", __version__, settings.service_ports())
        asyncio.run(main())
    finally:
        try:
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        except FileNotFoundError:
            pass
        cloud.db.dispose()
        log.info("stackbox stopped")
