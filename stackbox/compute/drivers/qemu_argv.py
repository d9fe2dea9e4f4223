"""The QEMU command line of one server, as a pure function of its spec.

Nothing here touches the host: `build_argv` turns an InstanceSpec and the
instance's file layout into an argv list, so every variant (buses, NIC
models, kernel boots, config drives) is unit-tested without starting QEMU.
Which disks exist follows from the spec alone (see `disk_plan`), so the
driver that creates them and the command line that uses them cannot
disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stackbox.compute.drivers.base import DriverError, InstanceSpec

SMBIOS_MANUFACTURER = "OpenStack Foundation"
SMBIOS_PRODUCT = "OpenStack Nova"
SMBIOS_FAMILY = "Virtual Machine"

DEFAULT_MACHINE = "pc"
DISK_BUSES = ("virtio", "scsi", "ide", "sata")
VIF_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e",
              "rtl8139": "rtl8139", "ne2k_pci": "ne2k_pci", "pcnet": "pcnet"}
VIDEO_MODELS = {"vga": "VGA", "cirrus": "cirrus-vga", "virtio": "virtio-vga",
                "qxl": "qxl-vga", "bochs": "bochs-display", "none": None}
RNG_MODELS = ("virtio",)
# usbtablet (nova's default pointer_model) gives VNC consoles an absolute
# pointer, so the remote mouse and the guest's agree.
POINTER_MODELS = ("usbtablet", "ps2mouse")
ARCHITECTURES = ("x86_64", "i686")
# pc and q35, plus their versioned names (pc-i440fx-7.2, pc-q35-7.2).
_MACHINE_RE = re.compile(r"^(pc|q35|pc-i440fx-[0-9.]+|pc-q35-[0-9.]+)$")
_TAP_RE = re.compile(r"^sbx[A-Za-z0-9_-]{1,12}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class InstancePaths:
    """Every file of one instance lives in its own directory."""
    dir: Path

    @property
    def root_disk(self) -> Path: return self.dir / "disk"
    @property
    def ephemeral_disk(self) -> Path: return self.dir / "disk.eph0"
    @property
    def swap_disk(self) -> Path: return self.dir / "disk.swap"
    @property
    def config_drive(self) -> Path: return self.dir / "disk.config"
    @property
    def pidfile(self) -> Path: return self.dir / "qemu.pid"
    @property
    def qmp(self) -> Path: return self.dir / "qmp.sock"
    @property
    def vnc(self) -> Path: return self.dir / "vnc.sock"
    @property
    def serial(self) -> Path: return self.dir / "serial.sock"
    @property
    def console_log(self) -> Path: return self.dir / "console.log"
    @property
    def saved_state(self) -> Path: return self.dir / "suspend.state"
    @property
    def record(self) -> Path: return self.dir / "instance.json"
    @property
    def running_flag(self) -> Path: return self.dir / "running.flag"

    def runtime_files(self) -> tuple[Path, ...]:
        """Files a QEMU process leaves behind when it is killed."""
        return (self.pidfile, self.qmp, self.vnc, self.serial)


@dataclass(frozen=True)
class DiskPlan:
    """Which disks an instance has, in the order the guest sees them."""
    root: bool
    ephemeral: bool
    swap: bool
    config_drive: Path | None


def disk_plan(spec: InstanceSpec) -> DiskPlan:
    # A kernel+initrd boot with a 0 GiB flavor has no root disk at all;
    # otherwise a root disk exists (an overlay, or blank when no image).
    return DiskPlan(root=spec.image is not None or spec.root_gb > 0,
                    ephemeral=spec.ephemeral_gb > 0, swap=spec.swap_mb > 0,
                    config_drive=spec.config_drive)


def opt(value: object) -> str:
    """Escape a value inside a QEMU `key=value,...` option (commas double)."""
    return str(value).replace(",", ",,")


def _hw(spec: InstanceSpec, key: str, allowed, default: str) -> str:
    value = (spec.hw.get(key) or default).strip().lower()
    if value not in allowed:
        raise DriverError(f"image property {key}={value!r} is not supported; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return value


def machine_type(spec: InstanceSpec, default: str = DEFAULT_MACHINE) -> str:
    value = (spec.hw.get("hw_machine_type") or default).strip()
    if not _MACHINE_RE.match(value):
        raise DriverError(f"image property hw_machine_type={value!r} is not supported; "
                          "allowed: pc, q35, pc-i440fx-<version>, pc-q35-<version>")
    return value


def is_q35(machine: str) -> bool:
    return machine == "q35" or machine.startswith("pc-q35-")


def validate_nics(spec: InstanceSpec) -> None:
    taps = [nic.tap for nic in spec.nics]
    for nic in spec.nics:
        if not _TAP_RE.match(nic.tap):
            raise DriverError(f"tap name {nic.tap!r} is not allowed: it must start with "
                              "'sbx' and have at most 15 characters of [A-Za-z0-9_-]")
        if not _MAC_RE.match(nic.mac.lower()):
            raise DriverError(f"MAC address {nic.mac!r} of port {nic.port_id} is malformed")
        if not 68 <= nic.mtu <= 65535:
            raise DriverError(f"MTU {nic.mtu} of port {nic.port_id} is outside 68..65535")
    if len(set(taps)) != len(taps):
        raise DriverError(f"tap names repeat: {', '.join(taps)}")


class _Buses:
    """Hands out device slots per bus so disks and the CD-ROM never collide."""

    def __init__(self, machine: str):
        self.q35 = is_q35(machine)
        self.argv: list[str] = []
        self._ide = 0
        self._sata = 0
        self._scsi = False
        self._ahci = False

    def ide_slot(self) -> str:
        # pc: PIIX has two IDE buses with two units each. q35: the ICH9
        # AHCI ports are named ide.0 .. ide.5, one unit each.
        n = self._ide
        self._ide += 1
        if self.q35:
            if n > 5:
                raise DriverError("too many IDE/SATA devices (q35 has 6 ports)")
            return f"bus=ide.{n}"
        if n > 3:
            raise DriverError("too many IDE devices (pc has 4 IDE slots)")
        return f"bus=ide.{n // 2},unit={n % 2}"

    def sata_slot(self) -> str:
        if self.q35:
            return self.ide_slot()
        if not self._ahci:
            self.argv += ["-device", "ahci,id=ahci0"]
            self._ahci = True
        n = self._sata
        self._sata += 1
        if n > 5:
            raise DriverError("too many SATA devices (the AHCI controller has 6 ports)")
        return f"bus=ahci0.{n}"

    def scsi_bus(self) -> str:
        if not self._scsi:
            self.argv += ["-device", "virtio-scsi-pci,id=scsi0"]
            self._scsi = True
        return "bus=scsi0.0"

    def disk(self, bus: str, drive_id: str, bootindex: int | None) -> None:
        boot = f",bootindex={bootindex}" if bootindex is not None else ""
        if bus == "virtio":
            dev = f"virtio-blk-pci,drive={drive_id},id={drive_id}-dev"
        elif bus == "scsi":
            dev = f"scsi-hd,{self.scsi_bus()},drive={drive_id},id={drive_id}-dev"
        elif bus == "ide":
            dev = f"ide-hd,{self.ide_slot()},drive={drive_id},id={drive_id}-dev"
        else:
            dev = f"ide-hd,{self.sata_slot()},drive={drive_id},id={drive_id}-dev"
        self.argv += ["-device", dev + boot]

    def cdrom(self, drive_id: str) -> None:
        # As nova: IDE on pc, SATA (the AHCI ports) on q35.
        slot = self.ide_slot()
        self.argv += ["-device", f"ide-cd,{slot},drive={drive_id},id={drive_id}-dev"]


def default_cmdline(plan: DiskPlan, bus: str) -> str:
    args = ["console=tty0", "console=ttyS0"]
    if plan.root:
        root = {"virtio": "/dev/vda", "ide": "/dev/sda"}.get(bus, "/dev/sda")
        args.insert(0, f"root={root}")
    return " ".join(args)


def build_argv(spec: InstanceSpec, paths: InstancePaths, *, qemu_binary: str,
               accel: str, default_machine: str = DEFAULT_MACHINE,
               cpu_model: str | None = None, incoming: bool = False) -> list[str]:
    """The full QEMU argv for `spec`, daemonising, with QMP, VNC and serial
    on unix sockets in the instance directory."""
    if accel not in ("kvm", "tcg"):
        raise DriverError(f"accelerator {accel!r} is not supported; allowed: kvm, tcg")
    machine = machine_type(spec, default_machine)
    bus = _hw(spec, "hw_disk_bus", DISK_BUSES, "virtio")
    video = _hw(spec, "hw_video_model", VIDEO_MODELS, "vga")
    rng = spec.hw.get("hw_rng_model", "").strip().lower()
    if rng and rng not in RNG_MODELS:
        raise DriverError(f"image property hw_rng_model={rng!r} is not supported; "
                          f"allowed: {', '.join(RNG_MODELS)}")
    pointer = _hw(spec, "hw_pointer_model", POINTER_MODELS, "usbtablet")
    if spec.architecture not in ARCHITECTURES:
        raise DriverError(f"architecture {spec.architecture!r} cannot run under "
                          f"{qemu_binary}; allowed: {', '.join(ARCHITECTURES)}")
    vif_override = spec.hw.get("hw_vif_model", "").strip().lower()
    validate_nics(spec)
    if spec.vcpus < 1 or spec.memory_mb < 16:
        raise DriverError(f"flavor too small: {spec.vcpus} vCPU, {spec.memory_mb} MiB "
                          "(at least 1 vCPU and 16 MiB)")
    plan = disk_plan(spec)
    if spec.kernel is None and not plan.root:
        raise DriverError("nothing to boot: no image, no kernel and a 0 GiB root disk")

    name = "".join(ch for ch in spec.name if ch.isprintable()) or spec.uuid
    smbios = ",".join([
        "type=1", f"manufacturer={SMBIOS_MANUFACTURER}", f"product={SMBIOS_PRODUCT}",
        f"family={SMBIOS_FAMILY}", f"serial={spec.uuid}", f"uuid={spec.uuid}"])
    argv = [
        qemu_binary, "-name", f"guest={opt(name)}", "-uuid", spec.uuid,
        "-smbios", smbios,
        "-machine", machine, "-accel", accel,
        "-m", str(spec.memory_mb), "-smp", str(spec.vcpus),
        "-no-user-config", "-nodefaults",
        # A guest that powers itself off stays as a stopped process in the
        # `shutdown` run state; the driver reaps it (housekeeping), so a
        # soft reboot can wait for the shutdown and then reset.
        "-no-shutdown",
        "-rtc", "base=localtime" if spec.os_type.lower() == "windows" else "base=utc",
        "-display", "none", "-vnc", f"unix:{opt(paths.vnc)}",
        "-chardev", f"socket,id=qmp,path={opt(paths.qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        # logappend=on makes QEMU open the log O_APPEND, which is what lets
        # the driver cut the file from outside without holes.
        "-chardev", f"socket,id=serial0,path={opt(paths.serial)},server=on,wait=off,"
                    f"logfile={opt(paths.console_log)},logappend=on",
        "-device", "isa-serial,chardev=serial0",
        "-device", "pvpanic",
        "-pidfile", str(paths.pidfile), "-daemonize",
    ]
    if cpu_model:
        argv += ["-cpu", cpu_model]

    buses = _Buses(machine)
    boot_index = 1
    for present, path, drive_id, fmt in (
            (plan.root, paths.root_disk, "drive-root", "qcow2"),
            (plan.ephemeral, paths.ephemeral_disk, "drive-eph0", "raw"),
            (plan.swap, paths.swap_disk, "drive-swap", "raw")):
        if not present:
            continue
        argv += ["-drive", f"file={opt(path)},if=none,id={drive_id},format={fmt},"
                           "cache=writeback,discard=unmap"]
        buses.disk(bus, drive_id, boot_index if drive_id == "drive-root" else None)
    if plan.config_drive is not None:
        argv += ["-drive", f"file={opt(plan.config_drive)},if=none,id=drive-config,"
                           "format=raw,media=cdrom,readonly=on"]
        buses.cdrom("drive-config")
    argv += buses.argv

    for i, nic in enumerate(spec.nics):
        model = vif_override or nic.model or "virtio"
        if model not in VIF_MODELS:
            raise DriverError(f"NIC model {model!r} (hw_vif_model) is not supported; "
                              f"allowed: {', '.join(sorted(VIF_MODELS))}")
        argv += ["-netdev", f"tap,id=hostnet{i},ifname={nic.tap},script=no,downscript=no"]
        dev = f"{VIF_MODELS[model]},netdev=hostnet{i},id=net{i},mac={nic.mac.lower()}"
        if model == "virtio" and nic.mtu != 1500:
            dev += f",host_mtu={nic.mtu}"
        argv += ["-device", dev]

    if VIDEO_MODELS[video]:
        argv += ["-device", VIDEO_MODELS[video]]
        if pointer == "usbtablet":
            argv += ["-device", "qemu-xhci,id=usb0", "-device", "usb-tablet,bus=usb0.0"]
    if rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                 "-device", "virtio-rng-pci,rng=rng0"]
    if spec.kernel is not None:
        if spec.kernel.path is None or (spec.ramdisk is not None and spec.ramdisk.path is None):
            raise DriverError("the kernel or ramdisk image is not in the host's image cache")
        argv += ["-kernel", str(spec.kernel.path)]
        if spec.ramdisk is not None:
            argv += ["-initrd", str(spec.ramdisk.path)]
        argv += ["-append", spec.kernel_cmdline or default_cmdline(plan, bus)]
    if incoming:
        # The saved RAM arrives over QMP (migrate-incoming with a passed fd).
        argv += ["-incoming", "defer"]
    return argv
