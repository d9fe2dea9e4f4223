"""The compute agent: converges one host's servers to what the database says.

Level-triggered: each pass reads every server on this host with a pending
task_state and carries the task out; a periodic pass compares each server's
recorded power state with what the driver sees (a guest that powered itself
off becomes SHUTOFF) and re-adopts running QEMUs after a restart. A task
interrupted by a crash is still in the database and runs again; every step
is idempotent. One server is never worked on twice at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import traceback
from pathlib import Path

from sqlalchemy import select

from stackbox.common.db import Database, utcnow
from stackbox.compute import states
from stackbox.compute.drivers.base import (ComputeDriver, DriverError, ImageFile, InstanceSpec,
                                           Nic, PowerState)
from stackbox.compute.models import ComputeHost, InstanceAction, Server
from stackbox.compute.service import ComputeService, internal_context
from stackbox.guest import configdrive

log = logging.getLogger("stackbox.compute.agent")

SYNC_SECONDS = 10
POLL_SECONDS = 1.0
MAX_PARALLEL = 8
DEFAULT_CMDLINE = "console=ttyS0"

# task_state -> (instance action event, handler method name)
TASKS = {
    states.SPAWNING: ("compute__do_build_and_run_instance", "_spawn"),
    states.DELETING: ("compute_terminate_instance", "_delete"),
    states.POWERING_OFF: ("compute_stop_instance", "_stop"),
    states.POWERING_ON: ("compute_start_instance", "_start"),
    states.REBOOTING: ("compute_reboot_instance", "_reboot"),
    states.REBOOTING_HARD: ("compute_reboot_instance", "_reboot"),
    states.PAUSING: ("compute_pause_instance", "_pause"),
    states.UNPAUSING: ("compute_unpause_instance", "_unpause"),
    states.SUSPENDING: ("compute_suspend_instance", "_suspend"),
    states.RESUMING: ("compute_resume_instance", "_resume"),
    states.REBUILDING: ("compute_rebuild_instance", "_rebuild"),
    states.RESIZE_PREP: ("compute_finish_resize", "_resize"),
    states.RESIZE_CONFIRMING: ("compute_confirm_resize", "_confirm_resize"),
    states.RESIZE_REVERTING: ("compute_revert_resize", "_revert_resize"),
    states.IMAGE_SNAPSHOT: ("compute_snapshot_instance", "_snapshot"),
}


class ComputeAgent:
    def __init__(self, db: Database, settings, *, compute: ComputeService, image,
                 driver: ComputeDriver, cache, host_id: str, accel: str, network=None):
        self.db = db
        self.settings = settings
        self.compute = compute
        self.image = image
        self.driver = driver
        self.cache = cache
        self.host_id = host_id
        self.accel = accel
        self.network = network
        self.instances_dir = Path(settings.data_dir) / "instances"
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.plugged = lambda: None     # the network agent's doorbell (new taps)
        # converge host networking now (bridge, DHCP host entry) before a guest
        # with NICs starts, as Nova waits for network-vif-plugged
        self.network_sync = lambda: None

    # -- host ------------------------------------------------------------------------------
    def register(self) -> None:
        res = self.driver.host_resources()
        cfg = self.settings.compute
        with self.db.transaction() as s:
            host = s.get(ComputeHost, self.host_id)
            if host is None:
                host = ComputeHost(id=self.host_id, created_at=utcnow())
                s.add(host)
            host.hostname = socket.gethostname()
            host.host_ip = _host_ip()
            host.availability_zone = cfg.availability_zone
            host.hypervisor_type = res.get("hypervisor_type", "QEMU")
            host.hypervisor_version = int(res.get("hypervisor_version", 0))
            host.driver = cfg.driver
            host.accel = self.accel
            host.vcpus = int(res["vcpus"])
            host.memory_mb = int(res["memory_mb"])
            host.disk_gb = int(res["disk_gb"])
            host.cpu_allocation_ratio = cfg.cpu_allocation_ratio
            host.ram_allocation_ratio = cfg.ram_allocation_ratio
            host.disk_allocation_ratio = cfg.disk_allocation_ratio
            host.reserved_memory_mb = cfg.reserved_host_memory_mb
            host.heartbeat_at = host.updated_at = utcnow()

    def heartbeat(self) -> None:
        with self.db.transaction() as s:
            host = s.get(ComputeHost, self.host_id)
            if host is not None:
                host.heartbeat_at = utcnow()

    # -- loop ------------------------------------------------------------------------------
    def wake(self) -> None:
        """Called by the API in this process after it records a task."""
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        await asyncio.to_thread(self.register)
        await asyncio.to_thread(self.adopt)
        last_sync = 0.0
        tasks: set[asyncio.Task] = set()
        while not stop.is_set():
            try:
                now = self._loop.time()
                if now - last_sync >= SYNC_SECONDS:
                    last_sync = now
                    await asyncio.to_thread(self.heartbeat)
                    await asyncio.to_thread(self.sync_power_states)
                for server_id in await asyncio.to_thread(self.pending):
                    if len(tasks) >= MAX_PARALLEL:
                        break
                    if self._claim(server_id):
                        task = asyncio.create_task(self._work(server_id))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            except Exception:
                log.exception("compute agent pass failed; retrying")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    def _claim(self, server_id: str) -> bool:
        with self._busy_lock:
            if server_id in self._busy:
                return False
            self._busy.add(server_id)
            return True

    async def _work(self, server_id: str) -> None:
        try:
            await asyncio.to_thread(self.reconcile, server_id)
        finally:
            with self._busy_lock:
                self._busy.discard(server_id)
            if self._event is not None:
                self._event.set()

    def pending(self) -> list[str]:
        with self.db.read() as s:
            return list(s.scalars(select(Server.id).where(Server.host_id == self.host_id,
                                                          Server.task_state.in_(list(TASKS)))
                                  .order_by(Server.updated_at)))

    def adopt(self) -> None:
        """After a restart: running instances with a server row are ours again
        (their state is synced below); instances without one are orphans."""
        with self.db.read() as s:
            known = set(s.scalars(select(Server.id).where(Server.host_id == self.host_id)))
        for uuid in self.driver.list_instances():
            if uuid not in known:
                log.warning("removing orphan instance %s (no server record)", uuid)
                try:
                    self.driver.destroy(uuid)
                except Exception:
                    log.exception("could not remove orphan instance %s", uuid)
        self.sync_power_states()

    def sync_power_states(self) -> None:
        with self.db.read() as s:
            rows = list(s.scalars(select(Server).where(Server.host_id == self.host_id,
                                                       Server.task_state.is_(None))))
        for server in rows:
            if server.vm_state not in (states.ACTIVE, states.STOPPED, states.PAUSED,
                                       states.SUSPENDED, states.RESIZED):
                continue
            if not self._claim(server.id):
                continue
            try:
                power = self.driver.power_state(server.id)
                self._observe(server.id, power)
            except Exception:
                log.exception("power sync of %s failed", server.id)
            finally:
                with self._busy_lock:
                    self._busy.discard(server.id)
        try:
            self.driver.housekeeping()
            self.cache.prune(self.driver.images_in_use() | self._images_wanted())
        except Exception:
            log.exception("driver housekeeping failed")

    def _images_wanted(self) -> set[str]:
        """Images this host's servers boot from (a boot between fetch and
        QEMU start must not lose its image to a prune)."""
        with self.db.read() as s:
            rows = s.execute(select(Server.image_id, Server.image_meta)
                             .where(Server.host_id == self.host_id)).all()
        wanted = set()
        for image_id, meta in rows:
            props = (meta or {}).get("properties") or {}
            wanted |= {image_id, props.get("kernel_id"), props.get("ramdisk_id")}
        return {w for w in wanted if w}

    def _observe(self, server_id: str, power: PowerState) -> None:
        with self.db.transaction() as s:
            server = s.get(Server, server_id)
            if server is None or server.task_state is not None:
                return
            server.power_state = states.POWER[power.value]
            if server.vm_state in (states.ACTIVE, states.RESIZED) and power in (
                    PowerState.SHUTDOWN, PowerState.CRASHED, PowerState.NOSTATE):
                log.info("server %s stopped outside stackbox: now SHUTOFF", server_id)
                server.vm_state = states.STOPPED
                server.updated_at = utcnow()
            elif server.vm_state == states.STOPPED and power == PowerState.RUNNING:
                server.vm_state = states.ACTIVE
                server.updated_at = utcnow()

    # -- one server ------------------------------------------------------------------------
    def reconcile(self, server_id: str) -> None:
        with self.db.read() as s:
            server = s.get(Server, server_id)
        if server is None or server.host_id != self.host_id or server.task_state is None:
            return
        event, handler = TASKS.get(server.task_state, (None, None))
        if handler is None:
            return          # not the agent's step (the API is still binding ports)
        started = utcnow()
        try:
            getattr(self, handler)(server)
            self._event_done(server_id, event, started, "Success")
        except Exception as e:
            log.warning("server %s: %s failed: %s", server_id, server.task_state, e)
            self._event_done(server_id, event, started, "Error",
                             traceback.format_exc(limit=5))
            self._fail(server, e)

    def _fail(self, server: Server, exc: Exception) -> None:
        message = exc.message if isinstance(exc, DriverError) else f"{type(exc).__name__}: {exc}"
        details = exc.details if isinstance(exc, DriverError) else traceback.format_exc(limit=5)
        if server.task_state == states.DELETING:
            # a delete must not be stuck on a broken driver: the records go anyway
            self.compute.purge(server.id)
            return
        if server.task_state == states.SPAWNING:
            # a failed boot leaves nothing running
            try:
                self.driver.destroy(server.id)
            except Exception:
                log.exception("cleanup after failed boot of %s", server.id)
            self._finish(server.id, vm_state=states.ERROR, task_state=None, power_state=0,
                         fault={"code": 500, "message": message[:255], "details": details,
                                "created": utcnow().isoformat()})
            return
        if server.task_state == states.IMAGE_SNAPSHOT:
            image_id = server.task_args.get("image_id")
            try:
                self.image.delete_image(internal_context(), image_id)
            except Exception:
                pass
            self._finish(server.id, task_state=None)
            return
        power = self._power(server.id)
        self._finish(server.id, vm_state=states.ERROR, task_state=None,
                     power_state=states.POWER[power.value],
                     fault={"code": 500, "message": message[:255], "details": details,
                            "created": utcnow().isoformat()})

    def _power(self, server_id: str) -> PowerState:
        try:
            return self.driver.power_state(server_id)
        except Exception:
            return PowerState.NOSTATE

    def _finish(self, server_id: str, **fields) -> None:
        with self.db.transaction() as s:
            server = s.get(Server, server_id)
            if server is None:
                return
            for key, value in fields.items():
                setattr(server, key, value)
            if fields.get("task_state", "x") is None:
                server.task_args = {}
            server.updated_at = utcnow()

    def _event_done(self, server_id: str, event: str | None, started, result: str,
                    tb: str | None = None) -> None:
        if event is None:
            return
        with self.db.transaction() as s:
            action = s.scalar(select(InstanceAction).where(InstanceAction.server_id == server_id)
                              .order_by(InstanceAction.start_time.desc()).limit(1))
            if action is None:
                return
            action.events = [*action.events, {
                "event": event, "start_time": started.isoformat(),
                "finish_time": utcnow().isoformat(), "result": result, "traceback": tb,
                "host": socket.gethostname(), "hostId": self.host_id}]
            action.message = "Error" if result == "Error" else action.message
            action.updated_at = utcnow()

    # -- spec ------------------------------------------------------------------------------
    def _image_file(self, image_id: str) -> ImageFile:
        ctx = internal_context()
        img, path = self.image.open_data(ctx, image_id)
        if path is None:
            raise DriverError(f"Image {image_id} has no data (status {img.status}).")

        def stream():
            with open(path, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk
        cached = self.cache.fetch(img.id, os_hash_value=img.os_hash_value, size=img.size,
                                  open_stream=stream)
        return ImageFile(id=img.id, path=cached, disk_format=img.disk_format or "raw",
                         size=img.size or 0, virtual_size=img.virtual_size)

    def _networked(self, spec: InstanceSpec) -> InstanceSpec:
        if spec.nics:
            try:
                self.network_sync()
            except Exception:
                log.exception("network pass before starting %s failed", spec.uuid)
        return spec

    def spec(self, server: Server, *, flavor: dict | None = None) -> InstanceSpec:
        flavor = flavor or server.flavor
        props = dict((server.image_meta or {}).get("properties") or {})
        image = self._image_file(server.image_id)
        kernel = self._image_file(props["kernel_id"]) if props.get("kernel_id") else None
        ramdisk = self._image_file(props["ramdisk_id"]) if props.get("ramdisk_id") else None
        nics = tuple(self._nics(server))
        config_drive = None
        if server.config_drive or props.get("img_config_drive") == "mandatory":
            config_drive = self._config_drive(server)
        return InstanceSpec(
            uuid=server.id, name=server.name, vcpus=flavor["vcpus"],
            memory_mb=flavor["ram"], root_gb=flavor["disk"], ephemeral_gb=flavor["ephemeral"],
            swap_mb=flavor["swap"], image=image, kernel=kernel, ramdisk=ramdisk,
            kernel_cmdline=props.get("os_command_line") or DEFAULT_CMDLINE,
            config_drive=config_drive, nics=nics, os_type=props.get("os_type", ""),
            hw={k: str(v) for k, v in props.items() if k.startswith("hw_")},
            architecture=props.get("architecture") or "x86_64")

    def _nics(self, server: Server) -> list[Nic]:
        if self.network is None:
            return []
        from stackbox.network.hoststate import bridge_name
        model = (server.image_meta.get("properties") or {}).get("hw_vif_model", "virtio")
        return [Nic(port_id=p["port_id"], mac=p["mac_address"], tap=p["tap"],
                    bridge=bridge_name(p["network_id"]), mtu=p.get("mtu") or 1500, model=model)
                for p in self.network.server_network_info(server.id)]

    def _config_drive(self, server: Server) -> Path:
        """The same documents the metadata service serves (one builder, two
        transports), as an ISO 9660 `config-2` drive."""
        from stackbox.metadata import content
        from stackbox.metadata.sources import instance_metadata
        instance = instance_metadata(server, self.network)
        network_data = content.network_data(instance) if instance.interfaces else None
        files = configdrive.openstack_layout(content.meta_data(instance), instance.user_data,
                                             network_data, None)
        path = self.driver.config_drive_path(server.id)
        configdrive.build_config_drive(path, files)
        return path

    def _shutdown_timeout(self, server: Server) -> float:
        """Nova's `os_shutdown_timeout` image property, else the configured one."""
        props = (server.image_meta or {}).get("properties") or {}
        try:
            return float(props["os_shutdown_timeout"])
        except (KeyError, ValueError):
            return self.settings.compute.shutdown_timeout

    # -- task handlers ---------------------------------------------------------------------
    def _spawn(self, server: Server) -> None:
        power = self._power(server.id)
        if power != PowerState.RUNNING:
            if server.id in self.driver.list_instances():
                self.driver.destroy(server.id)      # a half-done boot from before a crash
            self.driver.spawn(self._networked(self.spec(server)))
            self.plugged()
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None,
                     power_state=states.POWER["running"], launched_at=utcnow(), fault=None)

    def _delete(self, server: Server) -> None:
        self.driver.destroy(server.id)
        if self.network is not None:
            self.network.delete_server_ports(server.id)
        self.compute.purge(server.id)

    def _stop(self, server: Server) -> None:
        self.driver.power_off(server.id, timeout=self._shutdown_timeout(server))
        self._finish(server.id, vm_state=states.STOPPED, task_state=None,
                     power_state=states.POWER["shutdown"])

    def _start(self, server: Server) -> None:
        if self._power(server.id) != PowerState.RUNNING:
            self.driver.power_on(self._networked(self.spec(server)))
            self.plugged()
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None,
                     power_state=states.POWER["running"])

    def _reboot(self, server: Server) -> None:
        hard = server.task_state == states.REBOOTING_HARD
        if self._power(server.id) in (PowerState.RUNNING, PowerState.PAUSED):
            self.driver.reboot(server.id, hard=hard)
        else:
            self.driver.power_on(self.spec(server))
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None,
                     power_state=states.POWER["running"], fault=None)

    def _pause(self, server: Server) -> None:
        self.driver.pause(server.id)
        self._finish(server.id, vm_state=states.PAUSED, task_state=None,
                     power_state=states.POWER["paused"])

    def _unpause(self, server: Server) -> None:
        self.driver.unpause(server.id)
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None,
                     power_state=states.POWER["running"])

    def _suspend(self, server: Server) -> None:
        self.driver.suspend(server.id)
        self._finish(server.id, vm_state=states.SUSPENDED, task_state=None,
                     power_state=states.POWER["suspended"])

    def _resume(self, server: Server) -> None:
        self.driver.power_on(self.spec(server))
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None,
                     power_state=states.POWER["running"])

    def _rebuild(self, server: Server) -> None:
        was_running = server.vm_state == states.ACTIVE
        self.driver.power_off(server.id, timeout=self._shutdown_timeout(server))
        spec = self.spec(server)
        self.driver.rebuild(spec)
        if was_running or server.vm_state == states.ERROR:
            self.driver.power_on(spec)
        self._finish(server.id, vm_state=states.ACTIVE if was_running or
                     server.vm_state == states.ERROR else states.STOPPED, task_state=None,
                     power_state=states.POWER["running" if was_running else "shutdown"],
                     fault=None)

    def _resize(self, server: Server) -> None:
        was_running = server.vm_state == states.ACTIVE
        self.driver.power_off(server.id, timeout=self._shutdown_timeout(server))
        spec = self.spec(server)
        self.driver.resize_disks(spec)
        self.driver.power_on(spec)
        self._finish(server.id, vm_state=states.RESIZED, task_state=None,
                     power_state=states.POWER["running"],
                     task_args={"was_running": was_running})

    def _confirm_resize(self, server: Server) -> None:
        if hasattr(self.driver, "confirm_resize"):
            self.driver.confirm_resize(server.id)
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None)

    def _revert_resize(self, server: Server) -> None:
        self.driver.power_off(server.id, timeout=self._shutdown_timeout(server))
        spec = self.spec(server)
        if hasattr(self.driver, "revert_resize"):
            self.driver.revert_resize(spec)
        self.driver.power_on(spec)
        self._finish(server.id, vm_state=states.ACTIVE, task_state=None,
                     power_state=states.POWER["running"])

    def _snapshot(self, server: Server) -> None:
        image_id = server.task_args["image_id"]
        ctx = internal_context(server.project_id)
        dest = self.instances_dir / server.id / f"snapshot-{image_id}.qcow2"
        try:
            disk_format = self.driver.snapshot(server.id, dest)
            upload = self.image.begin_upload(ctx, image_id)
            try:
                with open(dest, "rb") as f:
                    while chunk := f.read(1024 * 1024):
                        upload.staged.write(chunk)
                self.image.finish_upload(ctx, upload)
            except BaseException:
                self.image.abort_upload(ctx, upload)
                raise
        finally:
            dest.unlink(missing_ok=True)
        log.info("server %s: snapshot %s (%s) uploaded", server.id, image_id, disk_format)
        self._finish(server.id, task_state=None)


def _host_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))   # no packet is sent: picks the source address
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"

