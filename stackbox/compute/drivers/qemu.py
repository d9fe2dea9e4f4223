"""The QEMU compute driver: one daemonised QEMU process per server.

Everything of a server lives in `<instances_dir>/<uuid>/` (see
qemu_argv.InstancePaths): disks, pidfile, QMP/VNC/serial unix sockets, the
console log, saved RAM of a suspended server and instance.json. QEMU runs
with `-daemonize` in its own session, so it outlives the agent and the API;
a new driver over the same directory re-adopts it from the pidfile, after
checking that the pid's command line really carries the server's uuid.

Control is over QMP (qmp.Monitor); host commands go through hostops. All
operations on one server are serialised by a per-uuid lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid as uuidlib
from contextlib import contextmanager
from pathlib import Path

from stackbox.common import hostops
from stackbox.common.fsutil import fsync_dir
from stackbox.compute.drivers import hostinfo
from stackbox.compute.drivers import qemu_disks as disks
from stackbox.compute.drivers import qemu_proc as proc
from stackbox.compute.drivers import qemu_record as record
from stackbox.compute.drivers import taps
from stackbox.compute.drivers.base import (ConsoleEndpoint, DriverError, InstanceSpec,
                                           PowerState)
from stackbox.compute.drivers.qemu_argv import (DEFAULT_MACHINE, InstancePaths, build_argv,
                                                disk_plan)
from stackbox.compute.drivers.qmp import Monitor, QmpError

log = logging.getLogger(__name__)

# QMP run states (query-status) -> what the agent is told.
_RUNSTATES = {
    "running": PowerState.RUNNING,
    "paused": PowerState.PAUSED, "suspended": PowerState.PAUSED,
    "debug": PowerState.PAUSED, "prelaunch": PowerState.PAUSED,
    "inmigrate": PowerState.PAUSED, "postmigrate": PowerState.PAUSED,
    "finish-migrate": PowerState.PAUSED, "save-vm": PowerState.PAUSED,
    "restore-vm": PowerState.PAUSED, "watchdog": PowerState.PAUSED,
    "shutdown": PowerState.SHUTDOWN,
    "guest-panicked": PowerState.CRASHED, "internal-error": PowerState.CRASHED,
    "io-error": PowerState.CRASHED,
}
_MIGRATION_DONE = ("completed", "failed", "cancelled")
MAX_UNIX_PATH = 107

def _check_uuid(value: str) -> str:
    try:
        if str(uuidlib.UUID(value)) == value:
            return value
    except (ValueError, TypeError, AttributeError):
        pass
    raise DriverError(f"instance id {value!r} is not a canonical UUID")


class QemuDriver:
    name = "qemu"

    def __init__(self, instances_dir: Path, *, accel: str,
                 qemu_binary: str = "qemu-system-x86_64",
                 console_log_bytes: int = 1024 * 1024,
                 machine_type: str = DEFAULT_MACHINE, cpu_model: str | None = None,
                 start_timeout: float = 60.0, qmp_timeout: float = 10.0,
                 stop_timeout: float = 10.0, soft_reboot_grace: float = 30.0,
                 suspend_timeout: float = 600.0, snapshot_timeout: float = 3600.0):
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"accel must be kvm or tcg, not {accel!r}")
        if console_log_bytes < 4096:
            raise ValueError("console_log_bytes must be at least 4096")
        self.instances_dir = Path(instances_dir).resolve()
        # AF_UNIX paths hold 107 bytes; QEMU would only fail at the first boot.
        longest = len(str(self.instances_dir / str(uuidlib.UUID(int=0)) / "serial.sock"))
        if longest > MAX_UNIX_PATH:
            raise ValueError(f"instances_dir {self.instances_dir} is too long: its socket "
                             f"paths would have {longest} bytes, unix sockets allow "
                             f"{MAX_UNIX_PATH}; use a shorter directory")
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.accel = accel
        self.qemu_binary = qemu_binary
        self.console_log_bytes = console_log_bytes
        self.machine_type = machine_type
        self.cpu_model = cpu_model
        self.start_timeout = start_timeout
        self.qmp_timeout = qmp_timeout
        self.stop_timeout = stop_timeout
        self.soft_reboot_grace = soft_reboot_grace
        self.suspend_timeout = suspend_timeout
        self.snapshot_timeout = snapshot_timeout
        self._version: int | None = None

    # --- helpers --------------------------------------------------------------

    def paths(self, uuid: str) -> InstancePaths:
        return InstancePaths(self.instances_dir / _check_uuid(uuid))

    def config_drive_path(self, uuid: str) -> Path:
        """Where the agent may build the config drive so destroy removes it."""
        return self.paths(uuid).config_drive

    @contextmanager
    def _locked(self, uuid: str):
        with proc.instance_lock(self.instances_dir, uuid):
            yield

    def _monitor(self, paths: InstancePaths) -> Monitor:
        return Monitor(paths.qmp, timeout=self.qmp_timeout)

    def _pid(self, paths: InstancePaths) -> int | None:
        return proc.find_pid(paths)

    def _kill(self, pid: int, paths: InstancePaths) -> None:
        proc.kill(pid, paths, self.stop_timeout)

    def _stop(self, pid: int, paths: InstancePaths) -> None:
        """QMP quit (QEMU flushes its disks), SIGKILL if that does not work."""
        try:
            with self._monitor(paths) as mon:
                mon.cmd("quit")
        except QmpError as exc:
            log.info("instance %s: %s; killing it", paths.dir.name, exc.message)
        if proc.wait_gone(pid, paths, self.stop_timeout):
            proc.clear_runtime(paths)
            return
        log.warning("instance %s: QEMU ignored quit; SIGKILL", paths.dir.name)
        self._kill(pid, paths)

    def _status(self, paths: InstancePaths) -> str:
        with self._monitor(paths) as mon:
            return mon.status()

    def _require_pid(self, paths: InstancePaths, action: str) -> int:
        pid = self._pid(paths)
        if pid is None:
            raise DriverError(f"cannot {action} instance {paths.dir.name}: it is not running")
        return pid

    # --- starting -------------------------------------------------------------

    def _prepare_disks(self, spec: InstanceSpec, paths: InstancePaths, *,
                       new_root: bool) -> None:
        plan = disk_plan(spec)
        if plan.root and not paths.root_disk.exists():
            if not new_root:
                raise DriverError(f"root disk of instance {spec.uuid} is missing "
                                  f"({paths.root_disk})")
            disks.create_root(paths.root_disk, spec.image, spec.root_gb)
        if plan.ephemeral and not paths.ephemeral_disk.exists():
            disks.create_ephemeral(paths.ephemeral_disk, spec.ephemeral_gb)
        if plan.swap and not paths.swap_disk.exists():
            disks.create_swap(paths.swap_disk, spec.swap_mb)
        for part in (spec.kernel, spec.ramdisk):
            if part is not None and part.path is None:
                raise DriverError(f"image {part.id} ({part.disk_format}) is not in the "
                                  "host's image cache")

    def _argv(self, spec: InstanceSpec, paths: InstancePaths, *, incoming: bool):
        return build_argv(spec, paths, qemu_binary=self.qemu_binary, accel=self.accel,
                          default_machine=self.machine_type, cpu_model=self.cpu_model,
                          incoming=incoming)

    def _boot(self, spec: InstanceSpec, paths: InstancePaths) -> None:
        """Plug taps, start QEMU, resume saved RAM if there is any. On any
        failure nothing of this attempt keeps running."""
        resume = paths.saved_state.exists()
        argv = self._argv(spec, paths, incoming=resume)
        created = []
        try:
            for nic in spec.nics:
                if taps.ensure(nic):
                    created.append(nic.tap)
            pid = self._exec(argv, paths)
            try:
                if resume:
                    self._restore(paths)
                elif self._status(paths) not in ("running", "prelaunch"):
                    raise DriverError("QEMU started but the guest is not running")
            except DriverError:
                self._kill(pid, paths)
                raise
        except DriverError:
            for tap in created:
                try:
                    taps.remove(tap)
                except DriverError as exc:
                    log.warning("%s", exc.message)
            raise
        paths.running_flag.touch()

    def _exec(self, argv: list[str], paths: InstancePaths) -> int:
        for f in paths.runtime_files():
            f.unlink(missing_ok=True)  # a killed QEMU's stale sockets
        try:
            result = hostops.run(argv, timeout=self.start_timeout, check=False)
        except hostops.CommandTimeout:
            pid = self._pid(paths)
            if pid:
                self._kill(pid, paths)
            raise DriverError(f"QEMU did not start within {self.start_timeout:g} s") from None
        except OSError as exc:
            raise DriverError(f"cannot run {self.qemu_binary}: {exc.strerror}") from None
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0:
            pid = self._pid(paths)
            if pid:
                self._kill(pid, paths)
            proc.clear_runtime(paths)
            raise DriverError(f"QEMU failed to start: "
                              f"{proc.qemu_error_line(stderr, self.qemu_binary)}",
                              details=stderr.strip())
        if stderr.strip():
            log.warning("instance %s: QEMU said: %s", paths.dir.name, stderr.strip())
        pid = self._pid(paths)
        if pid is None:
            raise DriverError("QEMU started but its pidfile names no live QEMU")
        return pid

    def _restore(self, paths: InstancePaths) -> None:
        with self._monitor(paths) as mon:
            fd = os.open(paths.saved_state, os.O_RDONLY | os.O_CLOEXEC)
            try:
                mon.pass_fd(fd, "restore")
            finally:
                os.close(fd)
            mon.cmd("migrate-incoming", {"uri": "fd:restore"})
            info = self._wait_migration(mon, "restore")
            if info.get("status") != "completed":
                raise DriverError("cannot resume from the saved state: "
                                  f"{info.get('error-desc', info.get('status'))}")
            if mon.status() != "running":
                mon.cmd("cont")
        paths.saved_state.unlink()

    def _wait_migration(self, mon: Monitor, what: str) -> dict:
        deadline = time.monotonic() + self.suspend_timeout
        while True:
            info = mon.cmd("query-migrate")
            if info.get("status") in _MIGRATION_DONE:
                return info
            if time.monotonic() > deadline:
                try:
                    mon.cmd("migrate_cancel")
                except QmpError:
                    pass
                raise DriverError(f"{what} did not finish within {self.suspend_timeout:g} s")
            time.sleep(0.05)

    # --- the driver API ---------------------------------------------------------

    def host_resources(self) -> dict:
        if self._version is None:
            self._version = hostinfo.qemu_version_number(self.qemu_binary)
        return hostinfo.host_resources(self.instances_dir, self._version)

    def list_instances(self) -> list[str]:
        found = []
        for entry in self.instances_dir.iterdir():
            try:
                if entry.is_dir() and _check_uuid(entry.name):
                    found.append(entry.name)
            except DriverError:
                continue
        return sorted(found)

    def power_state(self, uuid: str) -> PowerState:
        paths = self.paths(uuid)
        with self._locked(uuid):
            if not paths.dir.is_dir():
                return PowerState.NOSTATE
            if self._pid(paths) is None:
                if paths.saved_state.exists():
                    return PowerState.SUSPENDED
                # Gone while we meant it to run: killed, OOM, host reboot.
                if paths.running_flag.exists():
                    return PowerState.CRASHED
                return PowerState.SHUTDOWN
            try:
                return _RUNSTATES.get(self._status(paths), PowerState.RUNNING)
            except QmpError as exc:
                log.warning("instance %s: %s", uuid, exc.message)
                return PowerState.CRASHED

    def spawn(self, spec: InstanceSpec) -> None:
        paths = self.paths(spec.uuid)
        with self._locked(spec.uuid):
            if self._pid(paths) is not None:
                log.info("instance %s already runs; spawn is a no-op", spec.uuid)
                return
            self._argv(spec, paths, incoming=False)  # bad specs fail before any disk
            paths.dir.mkdir(parents=True, exist_ok=True)
            paths.saved_state.unlink(missing_ok=True)
            record.write(paths.record, spec)
            self._prepare_disks(spec, paths, new_root=True)
            self._boot(spec, paths)

    def power_on(self, spec: InstanceSpec) -> None:
        paths = self.paths(spec.uuid)
        with self._locked(spec.uuid):
            pid = self._pid(paths)
            if pid is not None:
                status = self._status(paths)
                if status != "shutdown":
                    if status != "running":
                        with self._monitor(paths) as mon:
                            mon.cmd("cont")
                    return
                self._stop(pid, paths)  # the guest powered itself off
            if not paths.dir.is_dir():
                raise DriverError(f"instance {spec.uuid} has no files on this host; "
                                  "spawn it first")
            record.write(paths.record, spec)
            self._prepare_disks(spec, paths, new_root=False)
            self._boot(spec, paths)

    def power_off(self, uuid: str, *, timeout: float = 60.0) -> None:
        paths = self.paths(uuid)
        with self._locked(uuid):
            pid = self._pid(paths)
            if pid is None:
                proc.clear_runtime(paths)
                return
            try:
                with self._monitor(paths) as mon:
                    if mon.status() == "running":
                        mon.cmd("system_powerdown")
                        self._await_shutdown(mon, timeout)
            except QmpError as exc:
                log.info("instance %s: %s; hard stop", uuid, exc.message)
            self._stop(pid, paths)

    @staticmethod
    def _await_shutdown(mon: Monitor, timeout: float) -> bool:
        """Wait for the guest to power itself off (-no-shutdown keeps QEMU
        in the `shutdown` run state). False when the guest ignored ACPI."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if mon.status() == "shutdown":
                return True
            time.sleep(0.2)
        return False

    def reboot(self, uuid: str, *, hard: bool) -> None:
        paths = self.paths(uuid)
        with self._locked(uuid):
            if self._pid(paths) is None:
                # As nova: rebooting a stopped server starts it again.
                spec = record.read_spec(paths.record)
                if spec is None:
                    raise DriverError(f"instance {uuid} is not running and has no "
                                      "readable instance.json to start it from")
                self._prepare_disks(spec, paths, new_root=False)
                self._boot(spec, paths)
                return
            with self._monitor(paths) as mon:
                if not hard and mon.status() == "running":
                    mon.cmd("system_powerdown")
                    self._await_shutdown(mon, self.soft_reboot_grace)
                mon.cmd("system_reset")
                if mon.status() != "running":
                    mon.cmd("cont")

    def pause(self, uuid: str) -> None:
        paths = self.paths(uuid)
        with self._locked(uuid):
            self._require_pid(paths, "pause")
            with self._monitor(paths) as mon:
                mon.cmd("stop")

    def unpause(self, uuid: str) -> None:
        paths = self.paths(uuid)
        with self._locked(uuid):
            self._require_pid(paths, "unpause")
            with self._monitor(paths) as mon:
                mon.cmd("cont")

    def suspend(self, uuid: str) -> None:
        paths = self.paths(uuid)
        with self._locked(uuid):
            pid = self._pid(paths)
            if pid is None:
                if paths.saved_state.exists():
                    return
                raise DriverError(f"cannot suspend instance {uuid}: it is not running")
            tmp = paths.dir / ".suspend.state.part"
            if self._status(paths) == "shutdown":
                # The guest powered itself off: there is no RAM worth saving.
                self._stop(pid, paths)
                raise DriverError(f"cannot suspend instance {uuid}: the guest powered "
                                  "itself off")
            with self._monitor(paths) as mon:
                was_running = mon.status() == "running"
                # Stopped first: one pass over RAM, and the saved state is
                # a consistent point in time with the disks (stop flushes).
                mon.cmd("stop")
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                 0o600)
                    try:
                        mon.pass_fd(fd, "suspend")
                    finally:
                        os.close(fd)
                    mon.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
                    mon.cmd("migrate", {"uri": "fd:suspend"})
                    info = self._wait_migration(mon, "saving RAM")
                    if info.get("status") != "completed":
                        raise DriverError("cannot save the guest's RAM: "
                                          f"{info.get('error-desc', info.get('status'))}")
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(tmp, paths.saved_state)
                    fsync_dir(str(paths.dir))
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    if was_running:
                        try:
                            mon.cmd("cont")
                        except QmpError as exc:
                            log.warning("instance %s: %s", uuid, exc.message)
                    raise
            self._stop(pid, paths)

    def console_output(self, uuid: str, *, length: int | None = None) -> str:
        paths = self.paths(uuid)
        if not paths.dir.is_dir():
            raise DriverError(f"instance {uuid} has no files on this host")
        proc.trim_log(paths.console_log, self.console_log_bytes)
        try:
            with open(paths.console_log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - self.console_log_bytes))
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        if length is None:
            return text
        lines = text.splitlines(keepends=True)
        return "".join(lines[-length:]) if length > 0 else ""

    def console_endpoint(self, uuid: str, kind: str) -> ConsoleEndpoint:
        paths = self.paths(uuid)
        sockets = {"vnc": paths.vnc, "serial": paths.serial}
        if kind not in sockets:
            raise DriverError(f"console type {kind!r} is not supported; allowed: serial, vnc")
        self._require_pid(paths, f"reach the {kind} console of")
        return ConsoleEndpoint(kind=kind, unix_path=sockets[kind])

    def snapshot(self, uuid: str, dest: Path) -> str:
        paths = self.paths(uuid)
        with self._locked(uuid):
            if not paths.root_disk.exists():
                raise DriverError(f"instance {uuid} has no root disk to snapshot")
            paused_here = False
            if self._pid(paths) is not None:
                with self._monitor(paths) as mon:
                    if mon.status() == "running":
                        mon.cmd("stop")  # flushes QEMU's qcow2 caches to the file
                        paused_here = True
            try:
                disks.flatten(paths.root_disk, Path(dest), timeout=self.snapshot_timeout)
            finally:
                if paused_here:
                    with self._monitor(paths) as mon:
                        mon.cmd("cont")
            return "qcow2"

    def resize_disks(self, spec: InstanceSpec) -> None:
        paths = self.paths(spec.uuid)
        with self._locked(spec.uuid):
            if self._pid(paths) is not None:
                raise DriverError(f"instance {spec.uuid} must be shut down to resize its disks")
            if not paths.dir.is_dir():
                raise DriverError(f"instance {spec.uuid} has no files on this host")
            if paths.root_disk.exists() and spec.root_gb:
                disks.grow(paths.root_disk, spec.root_gb * disks.GiB)
            for want, path in ((spec.ephemeral_gb * disks.GiB, paths.ephemeral_disk),
                               (spec.swap_mb * disks.MiB, paths.swap_disk)):
                if disks.file_size(path) != want:
                    path.unlink(missing_ok=True)  # recreated empty below, as nova does
            record.write(paths.record, spec)
            self._prepare_disks(spec, paths, new_root=True)

    def rebuild(self, spec: InstanceSpec) -> None:
        paths = self.paths(spec.uuid)
        with self._locked(spec.uuid):
            if self._pid(paths) is not None:
                raise DriverError(f"instance {spec.uuid} must be shut down to rebuild it")
            self._argv(spec, paths, incoming=False)
            paths.dir.mkdir(parents=True, exist_ok=True)
            paths.root_disk.unlink(missing_ok=True)
            paths.saved_state.unlink(missing_ok=True)
            record.write(paths.record, spec)
            self._prepare_disks(spec, paths, new_root=True)

    def destroy(self, uuid: str) -> None:
        paths = self.paths(uuid)
        with self._locked(uuid):
            names = set()
            body = record.read(paths.record)
            if body:
                names.update(body.get("taps", []))
            pid = self._pid(paths)
            if pid is not None:
                # The live command line names the taps even if the record is gone.
                live = re.findall(rb"ifname=([A-Za-z0-9_-]+)", proc.cmdline(pid))
                names.update(name.decode() for name in live)
                self._kill(pid, paths)
            for name in sorted(names):
                if name.startswith("sbx"):
                    taps.remove(name)
            shutil.rmtree(paths.dir, ignore_errors=True)
            if paths.dir.exists():
                raise DriverError(f"cannot remove {paths.dir}")

    # --- additions to the base interface ---------------------------------------

    def plug_vifs(self, spec: InstanceSpec) -> None:
        """Create missing taps and put each in its bridge; safe while the
        instance runs (a bridge made after the boot is joined here)."""
        with self._locked(spec.uuid):
            for nic in spec.nics:
                taps.ensure(nic)

    def images_in_use(self) -> set[str]:
        """Image ids that instances on this host depend on (backing files,
        kernels): the image cache must keep them (ImageCache.prune)."""
        used: set[str] = set()
        for uuid in self.list_instances():
            body = record.read(self.paths(uuid).record)
            if body:
                used.update(body.get("images", []))
        return used

    def housekeeping(self) -> dict:
        """Periodic upkeep: bound console logs, reap QEMUs whose guest
        powered itself off. Busy instances are skipped until the next pass."""
        trimmed, reaped = 0, []
        for uuid in self.list_instances():
            paths = self.paths(uuid)
            if proc.trim_log(paths.console_log, self.console_log_bytes):
                trimmed += 1
            lock = proc.instance_lock(self.instances_dir, uuid)
            if not lock.acquire(blocking=False):
                continue
            try:
                pid = self._pid(paths)
                if pid is not None and self._status(paths) == "shutdown":
                    self._stop(pid, paths)
                    reaped.append(uuid)
            except DriverError as exc:
                log.warning("housekeeping of %s: %s", uuid, exc.message)
            finally:
                lock.release()
        return {"trimmed": trimmed, "reaped": reaped}
