"""A driver that runs nothing: it records intent and answers at once.

FOR CONTROL-PLANE BENCHMARKS ONLY. Figures measured with it say how fast
the API, scheduler and agent are, never how fast a server boots; label
them so. States follow the same rules as the QEMU driver (pause needs a
running server, suspend keeps "saved RAM", destroy forgets everything), so
the agent's state machine is exercised honestly.

State lives in memory and, when `state_dir` is given, in one JSON file per
instance, so an agent restart re-adopts "running" servers as with QEMU.
"""

from __future__ import annotations

import json
import os
import threading
import uuid as uuidlib
from pathlib import Path

from stackbox.common.fsutil import atomic_write
from stackbox.compute.drivers.base import (ConsoleEndpoint, DriverError, InstanceSpec,
                                           PowerState)
from stackbox.compute.drivers.qemu_record import spec_to_json

# The smallest valid qcow2 v3 header: an empty 1 GiB disk, so a snapshot
# is something Glance's inspection accepts. Written by hand to stay fast.
_QCOW2_CLUSTER = 65536


def empty_qcow2(virtual_size: int = 1 << 30) -> bytes:
    """An empty qcow2 image (header, refcount table and block, L1 table)."""
    c = _QCOW2_CLUSTER
    l1_entries = -(-virtual_size // (c * (c // 8)))
    header = bytearray(c)
    fields = [
        (0, b"QFI\xfb"), (4, (3).to_bytes(4, "big")),        # magic, version 3
        (20, (16).to_bytes(4, "big")),                         # cluster_bits
        (24, virtual_size.to_bytes(8, "big")),
        (36, l1_entries.to_bytes(4, "big")),
        (40, (3 * c).to_bytes(8, "big")),                      # l1_table_offset
        (48, c.to_bytes(8, "big")),                            # refcount_table_offset
        (56, (1).to_bytes(4, "big")),                          # refcount_table_clusters
        (96, (4).to_bytes(4, "big")),                          # refcount_order (16 bit)
        (100, (104).to_bytes(4, "big")),                       # header_length
    ]
    for offset, value in fields:
        header[offset:offset + len(value)] = value
    refcount_table = bytearray(c)
    refcount_table[0:8] = (2 * c).to_bytes(8, "big")
    refblock = bytearray(c)
    for cluster in range(4):  # header, refcount table, refcount block, L1
        refblock[2 * cluster:2 * cluster + 2] = (1).to_bytes(2, "big")
    l1 = bytearray(c)
    return bytes(header + refcount_table + refblock + l1)


class NoopDriver:
    name = "noop"

    def __init__(self, state_dir: Path | None = None, *, vcpus: int = 64,
                 memory_mb: int = 262144, disk_gb: int = 10240):
        self.state_dir = Path(state_dir) if state_dir else None
        self._resources = {"vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb}
        self._lock = threading.Lock()
        self._instances: dict[str, dict] = {}
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for path in self.state_dir.glob("*.json"):
                try:
                    self._instances[path.stem] = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue

    def _save(self, uuid: str) -> None:
        if not self.state_dir:
            return
        path = self.state_dir / f"{uuid}.json"
        if uuid in self._instances:
            atomic_write(str(path), json.dumps(self._instances[uuid], sort_keys=True).encode())
        else:
            path.unlink(missing_ok=True)

    def _get(self, uuid: str) -> dict:
        inst = self._instances.get(uuid)
        if inst is None:
            raise DriverError(f"instance {uuid} has nothing on this host")
        return inst

    def _set(self, uuid: str, state: PowerState, *, require: tuple[PowerState, ...] = (),
             action: str = "") -> None:
        with self._lock:
            inst = self._get(uuid)
            if require and PowerState(inst["power"]) not in require:
                raise DriverError(f"cannot {action} instance {uuid}: it is {inst['power']}")
            inst["power"] = state.value
            self._save(uuid)

    def host_resources(self) -> dict:
        return {**self._resources, "hypervisor_type": "noop", "hypervisor_version": 1,
                "cpu_info": {"arch": "x86_64", "model": "noop", "vendor": "stackbox",
                             "topology": {"sockets": 1, "cores": self._resources["vcpus"],
                                          "threads": 1}, "features": []}}

    def list_instances(self) -> list[str]:
        with self._lock:
            return sorted(self._instances)

    def power_state(self, uuid: str) -> PowerState:
        with self._lock:
            inst = self._instances.get(uuid)
            return PowerState(inst["power"]) if inst else PowerState.NOSTATE

    def spawn(self, spec: InstanceSpec) -> None:
        uuidlib.UUID(spec.uuid)
        with self._lock:
            inst = self._instances.setdefault(spec.uuid, {"spec": spec_to_json(spec)})
            inst["power"] = PowerState.RUNNING.value
            inst["console"] = f"noop: instance {spec.uuid} started\n"
            self._save(spec.uuid)

    def power_on(self, spec: InstanceSpec) -> None:
        self._set(spec.uuid, PowerState.RUNNING)

    def power_off(self, uuid: str, *, timeout: float = 60.0) -> None:
        self._set(uuid, PowerState.SHUTDOWN)

    def reboot(self, uuid: str, *, hard: bool) -> None:
        self._set(uuid, PowerState.RUNNING)

    def pause(self, uuid: str) -> None:
        self._set(uuid, PowerState.PAUSED, require=(PowerState.RUNNING, PowerState.PAUSED),
                  action="pause")

    def unpause(self, uuid: str) -> None:
        self._set(uuid, PowerState.RUNNING, require=(PowerState.RUNNING, PowerState.PAUSED),
                  action="unpause")

    def suspend(self, uuid: str) -> None:
        self._set(uuid, PowerState.SUSPENDED,
                  require=(PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED),
                  action="suspend")

    def console_output(self, uuid: str, *, length: int | None = None) -> str:
        with self._lock:
            text = self._get(uuid).get("console", "")
        if length is None:
            return text
        lines = text.splitlines(keepends=True)
        return "".join(lines[-length:]) if length > 0 else ""

    def console_endpoint(self, uuid: str, kind: str) -> ConsoleEndpoint:
        if kind not in ("vnc", "serial"):
            raise DriverError(f"console type {kind!r} is not supported; allowed: serial, vnc")
        with self._lock:
            self._get(uuid)
        raise DriverError("the noop driver has no consoles")

    def snapshot(self, uuid: str, dest: Path) -> str:
        with self._lock:
            self._get(uuid)
        atomic_write(os.fspath(dest), empty_qcow2())
        return "qcow2"

    def resize_disks(self, spec: InstanceSpec) -> None:
        with self._lock:
            self._get(spec.uuid)["spec"] = spec_to_json(spec)
            self._save(spec.uuid)

    def rebuild(self, spec: InstanceSpec) -> None:
        self.resize_disks(spec)

    def destroy(self, uuid: str) -> None:
        with self._lock:
            self._instances.pop(uuid, None)
            self._save(uuid)

    def plug_vifs(self, spec: InstanceSpec) -> None:
        pass

    def images_in_use(self) -> set[str]:
        with self._lock:
            return {img["id"] for inst in self._instances.values()
                    for key in ("image", "kernel", "ramdisk")
                    if (img := inst.get("spec", {}).get(key))}

    def housekeeping(self) -> dict:
        return {"trimmed": 0, "reaped": []}
