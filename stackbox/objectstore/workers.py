"""Object-store workers: more processes serving the object-store port.

One Python process runs on one core at a time (the interpreter lock), and
object traffic is what keeps a core busy. So the stackbox process starts
`[object_store] workers - 1` more processes that accept on the same listening
socket (handed down as a file descriptor; the kernel gives each connection to
one of them). A worker serves only the object-store port (Swift v1 and S3)
on the same database and devices; the background passes (replicator,
auditor, expirer) and every other API stay in the stackbox process.

Caches stay correct across processes through the host's shared change
counter (stackbox.common.generation). A worker dies with the stackbox
process (PR_SET_PDEATHSIG), and one that dies on its own is started again.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stackbox.common.generation import SharedGeneration

log = logging.getLogger("stackbox.objectstore.workers")

PR_SET_PDEATHSIG = 1
RESTART_DELAY = 1.0          # seconds between checks, and before a restart
MAX_RESTART_DELAY = 60.0
YOUNG = 10.0                 # a worker that dies younger than this waits longer


def generation_path(data_dir: Path) -> Path:
    return data_dir / "generation"


def connection_shares(settings, index: int, *, create: bool = False):
    """The count of object-store connections each process holds (slot
    `index`), which evens out who accepts the next one (SharedAccept)."""
    from stackbox.common.http.serving import ConnectionShares
    return ConnectionShares(settings.data_dir / "object-connections", index,
                            settings.object_store.worker_count(), create=create)


def build_port_app(settings, identity, objectstore, generation):
    """The object-store port's ASGI app: S3 requests to the S3 API, the rest
    to the Swift API (the same in the stackbox process and in a worker)."""
    from stackbox.objectstore.api import build_app as build_swift_app
    from stackbox.objectstore.s3.api import build_s3_app, object_store_dispatcher, s3_settings
    from stackbox.objectstore.s3.store import ServiceStore
    return object_store_dispatcher(
        build_swift_app(objectstore, validator=identity),
        build_s3_app(ServiceStore(objectstore), identity, **s3_settings(settings),
                     generation=generation))


class Workers:
    """The worker processes of one stackbox process: started with the
    listening socket, restarted when one exits, stopped at the end."""

    def __init__(self, settings, sock: socket.socket, count: int):
        self.settings, self.sock, self.count = settings, sock, count
        self.procs: dict[int, subprocess.Popen] = {}
        self.started: dict[int, float] = {}

    def _spawn(self, index: int) -> subprocess.Popen:
        log_dir = self.settings.data_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        fd = self.sock.fileno()
        argv = [sys.executable, "-m", "stackbox.objectstore.workers", "--fd", str(fd),
                "--index", str(index), "--parent", str(os.getpid())]
        with open(log_dir / f"object-worker-{index}.out", "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                    pass_fds=(fd,))
        # the settings as JSON on stdin: exactly what this process runs with
        proc.stdin.write(self.settings.model_dump_json().encode())
        proc.stdin.close()
        self.started[index] = time.monotonic()
        return proc

    def start(self) -> None:
        for index in range(1, self.count):
            self.procs[index] = self._spawn(index)
        if self.procs:
            log.info("object-store workers: %s",
                     ", ".join(str(p.pid) for p in self.procs.values()))

    async def watch(self, stop: asyncio.Event) -> None:
        """Start again a worker that exited (crash, OOM kill) until `stop`.
        One that dies young (a start-up failure) waits longer each time, up
        to a minute, so a broken worker does not spin."""
        delay = {index: RESTART_DELAY for index in self.procs}
        due: dict[int, float] = {}
        while not stop.is_set():
            now = time.monotonic()
            for index, proc in list(self.procs.items()):
                if proc.poll() is None or stop.is_set():
                    continue
                if index not in due:
                    young = now - self.started[index] < YOUNG
                    delay[index] = min(MAX_RESTART_DELAY, 2 * delay[index]) if young \
                        else RESTART_DELAY
                    due[index] = now + (delay[index] if young else 0)
                    log.warning("object-store worker %d (pid %d) exited with %s; starting "
                                "it again%s", index, proc.pid, proc.returncode,
                                f" in {delay[index]:.0f} s" if young else "")
                if now >= due[index]:
                    del due[index]
                    self.procs[index] = self._spawn(index)
            try:
                await asyncio.wait_for(stop.wait(), RESTART_DELAY)
            except asyncio.TimeoutError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a worker finishes its requests in flight), then SIGKILL."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:       # the parent died before prctl took effect
        os._exit(0)


def serve_worker(settings, fd: int, index: int) -> None:
    """A worker's life: the object-store app on the inherited socket."""
    from stackbox.common.db import Database
    from stackbox.identity.service import IdentityService
    from stackbox.objectstore.bootstrap import build_service
    from stackbox.common.http.serving import (Server, new_event_loop,
                                              return_big_allocations_to_the_os, uvicorn_config)

    return_big_allocations_to_the_os()
    sock = socket.socket(fileno=fd)
    db = Database(settings.database_url)
    generation = SharedGeneration(generation_path(settings.data_dir))
    identity = IdentityService(db, settings, generation=generation)
    objectstore = build_service(db, settings, generation=generation)
    # A worker is stopped by the stackbox process (SIGTERM). It ignores the
    # SIGINT that Ctrl-C in the terminal of a foreground `stackbox up` sends
    # to the whole process group: the stackbox process stops it then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = Server(uvicorn_config(build_port_app(settings, identity, objectstore,
                                                  generation)), signals=(signal.SIGTERM,),
                    shared=(sock,), shares=connection_shares(settings, index))
    log.info("object-store worker %d serving port %d", index, settings.object_store.port)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(server.serve(sockets=[sock]))
    finally:
        db.dispose()
        log.info("object-store worker %d stopped", index)
        logging.shutdown()
        os._exit(0)


def main(argv=None) -> int:
    import argparse
    from stackbox.common import logs
    from stackbox.common.config import Settings
    ap = argparse.ArgumentParser(description="an object-store worker (started by stackbox)")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    a = ap.parse_args(argv)
    _die_with_parent(a.parent)
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    logs.setup(settings.data_dir, level=settings.log.level, max_bytes=settings.log.max_bytes,
               backups=settings.log.backups, to_stderr=False,
               name=f"object-worker-{a.index}.log")
    serve_worker(settings, a.fd, a.index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
