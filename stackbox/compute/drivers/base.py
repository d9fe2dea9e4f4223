"""The compute driver interface: this is the backend API the compute agent
uses to run servers on one host. The QEMU driver (drivers/qemu.py) is the
real one; drivers/noop.py records intent only (benchmarks of the control
plane, labelled as such).

Everything a driver needs arrives in an `InstanceSpec` built by the agent
from the database; a driver keeps no state of its own beyond files in its
instance directory, so an agent that restarts re-adopts what runs
(`list_instances` + `power_state`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class PowerState(str, enum.Enum):
    """What the hypervisor says, as Nova's power_state names it."""
    NOSTATE = "nostate"        # no process, no saved state
    RUNNING = "running"
    PAUSED = "paused"          # vCPUs stopped, process alive
    SHUTDOWN = "shutdown"      # process gone, disks kept
    SUSPENDED = "suspended"    # RAM saved to a file, process gone
    CRASHED = "crashed"        # process gone or guest panicked unexpectedly


@dataclass(frozen=True)
class ImageFile:
    """An image's data, as the agent fetched it into the host's cache
    (checksum already verified). `path` is None for a missing kernel/ramdisk."""
    id: str
    path: Path
    disk_format: str                 # qcow2, raw, aki, ari, ami, iso, ...
    size: int = 0
    virtual_size: int | None = None


@dataclass(frozen=True)
class Nic:
    """One NIC; the network agent fills `bridge` (empty: no bridge yet, the
    tap is created unplugged)."""
    port_id: str
    mac: str
    tap: str                         # <= 15 chars, sbx-tap prefix
    bridge: str = ""
    mtu: int = 1500
    model: str = "virtio"            # hw_vif_model: virtio, e1000, rtl8139, ne2k_pci, pcnet


@dataclass(frozen=True)
class InstanceSpec:
    uuid: str
    name: str                        # display name (for logs and process titles only)
    vcpus: int
    memory_mb: int
    root_gb: int                     # 0: the image's virtual size
    ephemeral_gb: int = 0
    swap_mb: int = 0
    image: ImageFile | None = None   # the root disk's image (None when booting kernel+initrd only)
    kernel: ImageFile | None = None  # from the image's kernel_id (aki)
    ramdisk: ImageFile | None = None # from the image's ramdisk_id (ari)
    kernel_cmdline: str = ""         # os_command_line image property, else a default
    config_drive: Path | None = None # an ISO 9660 `config-2` file the agent built
    nics: tuple[Nic, ...] = ()
    os_type: str = ""                # windows -> guest RTC in local time
    hw: dict[str, str] = field(default_factory=dict)  # hw_disk_bus, hw_video_model, hw_rng_model, ...
    architecture: str = "x86_64"


@dataclass(frozen=True)
class ConsoleEndpoint:
    """Where a console proxy connects: a unix socket path on this host or a
    host:port."""
    kind: str                        # "vnc" or "serial"
    unix_path: Path | None = None
    host: str = ""
    port: int = 0


class DriverError(Exception):
    """A driver operation failed. `message` is for people: it names what
    failed and, when QEMU said why, QEMU's own line (it becomes the server's
    fault message). `details` may hold more (stderr tail)."""

    def __init__(self, message: str, *, details: str = ""):
        super().__init__(message)
        self.message = message
        self.details = details


class ComputeDriver(Protocol):
    """The backend API. Every method is synchronous, idempotent where the
    name says so, and bounded in time (the agent runs them in threads)."""

    name: str

    def host_resources(self) -> dict:
        """{'vcpus', 'memory_mb', 'disk_gb', 'hypervisor_type', 'hypervisor_version',
        'cpu_info'} of this host, for placement and os-hypervisors."""

    def list_instances(self) -> list[str]:
        """uuids of every instance this driver has anything of on the host
        (running or not); used to re-adopt at start and find orphans."""

    def power_state(self, uuid: str) -> PowerState:
        """Current state, read from the process and QMP, never cached."""

    def spawn(self, spec: InstanceSpec) -> None:
        """Prepare disks (qcow2 overlay on the cached image, grown to root_gb;
        ephemeral and swap), attach the config drive, start the process
        detached so it outlives the agent, and return once the guest runs.
        On failure: raise DriverError with QEMU's reason and leave nothing
        running (disks may stay for a retry; destroy() removes them)."""

    def power_on(self, spec: InstanceSpec) -> None:
        """Start a SHUTDOWN or SUSPENDED instance from its existing disks
        (a suspended one resumes from its saved state)."""

    def power_off(self, uuid: str, *, timeout: float = 60.0) -> None:
        """ACPI power button, wait up to `timeout`, then hard stop. Idempotent."""

    def reboot(self, uuid: str, *, hard: bool) -> None:
        """Soft: ACPI shutdown inside the guest is not awaited; a reset after
        a short grace period. Hard: immediate system_reset."""

    def pause(self, uuid: str) -> None: ...
    def unpause(self, uuid: str) -> None: ...

    def suspend(self, uuid: str) -> None:
        """Save RAM to a file in the instance dir and stop the process."""

    def console_output(self, uuid: str, *, length: int | None = None) -> str:
        """The serial console log (last `length` lines when given)."""

    def console_endpoint(self, uuid: str, kind: str) -> ConsoleEndpoint:
        """Where to reach the VNC or serial console of a running instance."""

    def snapshot(self, uuid: str, dest: Path) -> str:
        """Write the root disk, flattened, as a qcow2 file at `dest`
        (consistent: pauses the guest if running). Returns the disk format."""

    def resize_disks(self, spec: InstanceSpec) -> None:
        """Grow the root (never shrink) and recreate ephemeral/swap for a new
        flavor; the instance is SHUTDOWN."""

    def rebuild(self, spec: InstanceSpec) -> None:
        """Replace the root disk with a fresh overlay on spec.image; SHUTDOWN."""

    def destroy(self, uuid: str) -> None:
        """Hard stop and remove everything: process, disks, sockets, saved
        state, tap devices, logs. Idempotent; nothing of `uuid` remains."""
