"""The stackbox process: every API in one process, one event loop, one
uvicorn server listening on each service's port (and the object-store
workers it starts for the object-store port: stackbox.objectstore.workers)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from pathlib import Path

from stackbox import __version__
from stackbox.common import registry
from stackbox.common.config import Settings
from stackbox.common.db import Database, utcnow
from stackbox.common.http.app import PortDispatcher
from stackbox.common.http.serving import (Server, new_event_loop,
                                          return_big_allocations_to_the_os, uvicorn_config)
from stackbox.compute.api import ComputeApi, network_addresses
from stackbox.compute.api import build_app as build_compute_app
from stackbox.compute.consoleproxy import (build_console_app, console_base_url, console_url,
                                           find_novnc)
from stackbox.identity.api import build_app as build_identity_app
from stackbox.identity.service import IdentityService
from stackbox.image.api import build_app as build_image_app
from stackbox.image.drivers.local import LocalStore
from stackbox.image.service import ImageService
from stackbox.compute.service import ComputeService
from stackbox.objectstore.auditor import Auditor
from stackbox.objectstore.replicator import Replicator
from stackbox.objectstore.bootstrap import build_service as build_objectstore
from stackbox.common.generation import SharedGeneration
from stackbox.objectstore.workers import Workers, build_port_app, connection_shares, generation_path
from stackbox.network.api import build_app as build_network_app
from stackbox.network.service import NetworkService

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
        # shared with the object-store workers: see stackbox.common.generation
        self.generation = SharedGeneration(generation_path(settings.data_dir))
        self.identity = IdentityService(self.db, settings, generation=self.generation)
        self.image = ImageService(self.db, settings, LocalStore(settings.data_dir / "images"))
        self.network = NetworkService(self.db, settings)
        self.compute = ComputeService(self.db, settings, image=self.image, network=self.network)
        self.compute_agent = None
        self.network_agent = None
        self.objectstore = build_objectstore(self.db, settings, generation=self.generation)
        self.started_at = utcnow()

    def prepare(self) -> None:
        self.identity.keys.ensure_key()
        self.identity.auth.revocations.load()
        self.compute_agent = compute_agent(self.settings, self.db, self.compute, self.image,
                                           self.network)
        self.compute.wake = self.compute_agent.wake
        from stackbox.metadata.plumbing import MetadataPlumbing
        from stackbox.metadata.server import MetadataServer, MetadataThread
        from stackbox.metadata.sources import Lookup
        from stackbox.network.agent import NetworkAgent
        md = self.settings.metadata
        # SQLite (WAL) reads are local and never wait for writers: batched
        # lookups on the metadata loop then beat worker threads by far in a
        # boot storm (docs/metadata.md); a network database stays in threads.
        self.metadata_server = MetadataServer(
            Lookup(self.compute, self.network), cache_seconds=md.cache_seconds,
            require_token=md.require_token,
            lookup_in_thread=not self.settings.database_url.startswith("sqlite"))
        self.metadata_thread = MetadataThread(self.metadata_server)
        host_id = self.compute_agent.host_id
        self.network_agent = NetworkAgent.from_settings(
            self.settings, desired=lambda: self.network.host_state(host_id),
            metadata=MetadataPlumbing(self.metadata_server, self.metadata_thread.loop))
        # a new tap is plugged and filtered at once, not at the next pass
        self.compute_agent.plugged = self.network_agent.wake
        self.compute_agent.network_sync = self.network_agent.reconcile_once

    def apps(self) -> dict[int, object]:
        auth_url = lambda: self.settings.base_url("identity") + "/v3"  # noqa: E731
        compute = ComputeApi(self.compute, base_url=lambda: self.settings.base_url("compute"),
                             console_url=self.console_url, driver=self.compute_agent.driver,
                             network_addresses=network_addresses(self.network))
        return {self.settings.identity.port: build_identity_app(self.identity,
                                                                auth_url=auth_url),
                self.settings.image.port: build_image_app(self.image, validator=self.identity),
                self.settings.compute.port: build_compute_app(compute, validator=self.identity),
                self.settings.compute.console_port: build_console_app(
                    self.compute.console_tokens.resolver(),
                    novnc_dir=find_novnc(self.settings.compute.novnc_dir)),
                self.settings.object_store.port: build_port_app(
                    self.settings, self.identity, self.objectstore, self.generation),
                self.settings.network.port: build_network_app(self.network,
                                                              validator=self.identity)}

    def console_url(self, protocol: str, token: str) -> str:
        return console_url(console_base_url(self.settings), protocol, token)

    def chores(self, stop: asyncio.Event) -> list:
        """The periodic work of this process, each in a worker thread: the
        heartbeat for `stackbox status` and signing-key rotation; the object
        expirer (GET and listings hide expired objects already; this frees the
        space and fixes the counters), replicator and auditor (bounded rate)."""
        cfg = self.settings.object_store
        backend = self.objectstore.backend
        passes = [("housekeeping", self._housekeeping, HEARTBEAT_SECONDS),
                  ("object expirer", lambda halt: self.objectstore.expire(),
                   cfg.expirer_interval),
                  ("object replicator", Replicator(backend).run_pass, cfg.replicator_interval)]
        if cfg.auditor_bytes_per_second:
            auditor = Auditor(backend, bytes_per_second=cfg.auditor_bytes_per_second)
            passes.append(("object auditor", auditor.run_pass, cfg.auditor_interval))
        return [every(stop, name, run_pass, seconds) for name, run_pass, seconds in passes]

    def _housekeeping(self, halt: threading.Event) -> None:
        registry.heartbeat(self.db, binary="stackbox-api", version=__version__,
                           started_at=self.started_at)
        self.identity.keys.ensure_key()


async def every(stop: asyncio.Event, name: str, run_pass, seconds: float) -> None:
    """run_pass(halt) in a worker thread, then wait `seconds`, until `stop`;
    a failed pass is logged and retried; `halt` asks a long pass to end."""
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
            log.exception("%s pass failed; retrying", name)
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass


def accel_cache_dir(settings: Settings) -> Path:
    """The probe result depends only on the host (QEMU version, kernel), so
    clouds that share a guest cache share it too."""
    from stackbox.compute.drivers.accel import default_cache_dir
    if settings.compute.guest_cache_dir:
        return settings.compute.guest_cache_dir / "accel"
    return default_cache_dir(settings.data_dir)


def choose_accel(settings: Settings) -> str:
    """KVM where a guest really boots under it, else TCG with one warning."""
    if settings.compute.accel != "auto":
        return settings.compute.accel
    from stackbox.compute.drivers.accel import probe_accelerator
    try:
        result = probe_accelerator(cache_dir=accel_cache_dir(settings))
    except Exception as e:     # a probe that fails says nothing good about KVM
        log.warning("accelerator probe failed (%s): guests run under TCG, slower", e)
        return "tcg"
    if result.accel != "kvm":
        log.warning("KVM is not usable here (%s): guests run under TCG, slower", result.reason)
    return result.accel


def compute_agent(settings: Settings, db: Database, compute: ComputeService, image,
                  network=None):
    """This host's compute agent with the configured driver (built at start-up
    so a bad setting fails now, not at the first boot)."""
    from stackbox.compute.agent import ComputeAgent
    from stackbox.compute.imagecache import ImageCache
    from stackbox.compute.scheduler import local_host_id
    instances = settings.data_dir / "instances"
    cfg = settings.compute
    if cfg.driver == "noop":
        from stackbox.compute.drivers.noop import NoopDriver
        driver, accel = NoopDriver(instances), "none"
    else:
        from stackbox.compute.drivers.qemu import QemuDriver
        accel = choose_accel(settings)
        driver = QemuDriver(instances, accel=accel, console_log_bytes=cfg.console_log_bytes)
    return ComputeAgent(db, settings, compute=compute, image=image, driver=driver,
                        cache=ImageCache(settings.data_dir / "cache" / "base"),
                        host_id=local_host_id(settings.data_dir), accel=accel,
                        network=network)


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    return_big_allocations_to_the_os()
    cloud = Cloud(settings)
    cloud.prepare()
    if sockets is None:
        sockets = [bind(settings.api.bind_address, p)
                   for p in settings.listen_ports().values()]
    store_port = settings.object_store.port
    store = next(s for s in sockets if s.getsockname()[1] == store_port)
    workers = Workers(settings, store, settings.object_store.worker_count())
    shared = workers.count > 1      # several processes accept on the store port
    server = Server(uvicorn_config(PortDispatcher(cloud.apps())),
                    shared=(store,) if shared else (),
                    shares=connection_shares(settings, 0, create=True) if shared else None)
    pid_path = pidfile(settings.data_dir)
    pid_path.write_text(f"{os.getpid()}\n")

    async def main():
        stop = asyncio.Event()
        workers.start()
        chores = [asyncio.create_task(workers.watch(stop)),
                  asyncio.create_task(cloud.compute_agent.run(stop)),
                  asyncio.create_task(cloud.network_agent.run(stop)),
                  *(asyncio.create_task(chore) for chore in cloud.chores(stop))]
        try:
            await server.serve(sockets=sockets)
        finally:
            stop.set()
            await asyncio.gather(*chores, return_exceptions=True)
            await asyncio.to_thread(workers.stop)
            await asyncio.to_thread(cloud.metadata_thread.stop)

    try:
        log.info("stackbox %s serving %s", __version__, settings.service_ports())
        # uvloop when installed: about 10-20% less CPU per object-store request
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main())
    finally:
        try:
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        except FileNotFoundError:
            pass
        cloud.db.dispose()
        log.info("stackbox stopped")
        # a worker thread still in a host command (a network pass, a QMP call)
        # must not keep a stopped stackbox alive: its work is idempotent and
        # the next start redoes it
        logging.shutdown()
        os._exit(0)
