"""QEMU command lines for the spec variants (pure: nothing is started),
plus the driver's other pure pieces: QEMU's error line, console-log
trimming, the instance record and the version number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackbox.compute.drivers import qemu_record
from stackbox.compute.drivers.base import DriverError, ImageFile, InstanceSpec, Nic
from stackbox.compute.drivers.hostinfo import parse_version
from stackbox.compute.drivers.qemu_proc import qemu_error_line, trim_log
from stackbox.compute.drivers.qemu_argv import InstancePaths, build_argv, disk_plan

UUID = "6f1e8a52-3c1d-4b0e-9d55-0c8f5b7a2e11"
DIR = Path("/srv/inst") / UUID
PATHS = InstancePaths(DIR)
KERNEL = ImageFile("k1", Path("/cache/k1"), "aki")
RAMDISK = ImageFile("r1", Path("/cache/r1"), "ari")
IMAGE = ImageFile("i1", Path("/cache/i1"), "qcow2", virtual_size=1 << 30)


def spec(**kw) -> InstanceSpec:
    base = dict(uuid=UUID, name="web-1", vcpus=2, memory_mb=256, root_gb=1, image=IMAGE)
    base.update(kw)
    return InstanceSpec(**base)


def argv(s: InstanceSpec, **kw) -> list[str]:
    return build_argv(s, PATHS, qemu_binary="qemu-system-x86_64", accel="tcg", **kw)


def values(av: list[str], flag: str) -> list[str]:
    return [av[i + 1] for i, a in enumerate(av) if a == flag]


def test_identity_smbios_and_basics():
    av = argv(spec())
    assert av[0] == "qemu-system-x86_64"
    assert values(av, "-uuid") == [UUID]
    assert values(av, "-name") == ["guest=web-1"]
    assert values(av, "-smbios") == [
        "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,"
        f"family=Virtual Machine,serial={UUID},uuid={UUID}"]
    assert values(av, "-machine") == ["pc"]
    assert values(av, "-accel") == ["tcg"]
    assert values(av, "-m") == ["256"] and values(av, "-smp") == ["2"]
    for flag in ("-no-user-config", "-nodefaults", "-daemonize", "-no-shutdown"):
        assert flag in av
    assert values(av, "-display") == ["none"]
    assert values(av, "-vnc") == [f"unix:{DIR}/vnc.sock"]
    assert values(av, "-pidfile") == [f"{DIR}/qemu.pid"]
    assert values(av, "-rtc") == ["base=utc"]
    assert "-incoming" not in av and "-kernel" not in av and "-cpu" not in av


def test_qmp_and_serial_sockets_with_console_logfile():
    av = argv(spec())
    chardevs = values(av, "-chardev")
    assert f"socket,id=qmp,path={DIR}/qmp.sock,server=on,wait=off" in chardevs
    serial = next(c for c in chardevs if c.startswith("socket,id=serial0"))
    assert f"path={DIR}/serial.sock" in serial
    assert f"logfile={DIR}/console.log,logappend=on" in serial
    assert "chardev=qmp,mode=control" in values(av, "-mon")
    assert "isa-serial,chardev=serial0" in values(av, "-device")


def test_root_overlay_on_virtio_boots_first():
    av = argv(spec())
    assert values(av, "-drive") == [
        f"file={DIR}/disk,if=none,id=drive-root,format=qcow2,cache=writeback,discard=unmap"]
    assert "virtio-blk-pci,drive=drive-root,id=drive-root-dev,bootindex=1" in values(av, "-device")


def test_kernel_initrd_only_has_no_disk():
    s = spec(image=None, root_gb=0, kernel=KERNEL, ramdisk=RAMDISK,
             kernel_cmdline="console=ttyS0 quiet")
    av = argv(s)
    assert values(av, "-kernel") == ["/cache/k1"]
    assert values(av, "-initrd") == ["/cache/r1"]
    assert values(av, "-append") == ["console=ttyS0 quiet"]
    assert values(av, "-drive") == []
    assert not disk_plan(s).root


def test_kernel_boot_default_cmdline_names_the_root_disk():
    av = argv(spec(kernel=KERNEL, ramdisk=RAMDISK))
    assert values(av, "-append") == ["root=/dev/vda console=tty0 console=ttyS0"]
    av = argv(spec(image=None, root_gb=0, kernel=KERNEL))
    assert values(av, "-append") == ["console=tty0 console=ttyS0"]
    assert "-initrd" not in av


def test_blank_root_when_no_image_but_root_gb():
    s = spec(image=None, kernel=KERNEL)
    assert disk_plan(s).root
    assert any(d.startswith(f"file={DIR}/disk,") for d in values(argv(s), "-drive"))


def test_nothing_to_boot_is_refused():
    with pytest.raises(DriverError, match="nothing to boot"):
        argv(spec(image=None, root_gb=0))


def test_missing_kernel_file_in_cache_is_refused():
    with pytest.raises(DriverError, match="not in the host's image cache"):
        argv(spec(kernel=ImageFile("k", None, "aki")))


def test_ephemeral_swap_and_config_drive_on_pc():
    s = spec(ephemeral_gb=2, swap_mb=512, config_drive=DIR / "disk.config")
    av = argv(s)
    drives = values(av, "-drive")
    assert [d.split(",")[0] for d in drives] == [
        f"file={DIR}/disk", f"file={DIR}/disk.eph0", f"file={DIR}/disk.swap",
        f"file={DIR}/disk.config"]
    assert "format=raw" in drives[1] and "format=raw" in drives[2]
    assert drives[3].endswith("format=raw,media=cdrom,readonly=on")
    devices = values(av, "-device")
    assert "virtio-blk-pci,drive=drive-eph0,id=drive-eph0-dev" in devices
    assert "virtio-blk-pci,drive=drive-swap,id=drive-swap-dev" in devices
    assert "ide-cd,bus=ide.0,unit=0,drive=drive-config,id=drive-config-dev" in devices


def test_q35_puts_the_config_drive_on_sata():
    s = spec(config_drive=Path("/cd.iso"), hw={"hw_machine_type": "q35"})
    av = argv(s)
    assert values(av, "-machine") == ["q35"]
    assert "ide-cd,bus=ide.0,drive=drive-config,id=drive-config-dev" in values(av, "-device")


def test_ide_disks_share_slots_with_the_cdrom():
    s = spec(ephemeral_gb=1, config_drive=Path("/cd.iso"), hw={"hw_disk_bus": "ide"})
    devices = values(argv(s), "-device")
    assert "ide-hd,bus=ide.0,unit=0,drive=drive-root,id=drive-root-dev,bootindex=1" in devices
    assert "ide-hd,bus=ide.0,unit=1,drive=drive-eph0,id=drive-eph0-dev" in devices
    assert "ide-cd,bus=ide.1,unit=0,drive=drive-config,id=drive-config-dev" in devices


def test_ide_slots_run_out():
    s = spec(ephemeral_gb=1, swap_mb=1, config_drive=Path("/a"), hw={"hw_disk_bus": "ide"})
    argv(s)  # root, ephemeral, swap and the CD-ROM fill pc's four IDE slots
    # No spec asks for a fifth; the allocator still refuses one.
    from stackbox.compute.drivers.qemu_argv import _Buses
    buses = _Buses("pc")
    for _ in range(4):
        buses.ide_slot()
    with pytest.raises(DriverError, match="too many IDE"):
        buses.ide_slot()


def test_scsi_bus_adds_one_controller():
    devices = values(argv(spec(ephemeral_gb=1, hw={"hw_disk_bus": "scsi"})), "-device")
    assert devices.count("virtio-scsi-pci,id=scsi0") == 1
    assert "scsi-hd,bus=scsi0.0,drive=drive-root,id=drive-root-dev,bootindex=1" in devices


def test_sata_on_pc_adds_ahci():
    devices = values(argv(spec(hw={"hw_disk_bus": "sata"})), "-device")
    assert "ahci,id=ahci0" in devices
    assert "ide-hd,bus=ahci0.0,drive=drive-root,id=drive-root-dev,bootindex=1" in devices


def test_nics_as_taps_with_models_and_mtu():
    nics = (Nic("p1", "52:54:00:AA:BB:01", "sbx-tap-1", bridge="sbx-br-1", mtu=1450),
            Nic("p2", "52:54:00:aa:bb:02", "sbx-tap-2", model="e1000"))
    av = argv(spec(nics=nics))
    assert values(av, "-netdev") == [
        "tap,id=hostnet0,ifname=sbx-tap-1,script=no,downscript=no",
        "tap,id=hostnet1,ifname=sbx-tap-2,script=no,downscript=no"]
    devices = values(av, "-device")
    assert "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:aa:bb:01,host_mtu=1450" in devices
    assert "e1000,netdev=hostnet1,id=net1,mac=52:54:00:aa:bb:02" in devices


def test_hw_vif_model_overrides_every_nic():
    nics = (Nic("p1", "52:54:00:00:00:01", "sbx-t1"),)
    devices = values(argv(spec(nics=nics, hw={"hw_vif_model": "rtl8139"})), "-device")
    assert "rtl8139,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01" in devices


@pytest.mark.parametrize("nic,match", [
    (Nic("p", "52:54:00:00:00:01", "eth0"), "tap name"),
    (Nic("p", "52:54:00:00:00:01", "sbx-tap-toolong-x"), "tap name"),
    (Nic("p", "not-a-mac", "sbx-t1"), "MAC"),
    (Nic("p", "52:54:00:00:00:01", "sbx-t1", mtu=20), "MTU"),
    (Nic("p", "52:54:00:00:00:01", "sbx-t1", model="virtio-pro"), "allowed: e1000"),
])
def test_bad_nics_are_refused(nic, match):
    with pytest.raises(DriverError, match=match):
        argv(spec(nics=(nic,)))


def test_duplicate_taps_are_refused():
    nics = (Nic("p1", "52:54:00:00:00:01", "sbx-t1"), Nic("p2", "52:54:00:00:00:02", "sbx-t1"))
    with pytest.raises(DriverError, match="repeat"):
        argv(spec(nics=nics))


@pytest.mark.parametrize("model,device", [("vga", "VGA"), ("cirrus", "cirrus-vga"),
                                          ("virtio", "virtio-vga"), ("qxl", "qxl-vga")])
def test_video_models(model, device):
    assert device in values(argv(spec(hw={"hw_video_model": model})), "-device")


def test_pointer_models():
    devices = values(argv(spec()), "-device")
    assert "qemu-xhci,id=usb0" in devices and "usb-tablet,bus=usb0.0" in devices
    for hw in ({"hw_pointer_model": "ps2mouse"}, {"hw_video_model": "none"}):
        assert not any("usb" in d for d in values(argv(spec(hw=hw)), "-device"))


def test_other_architectures_are_refused():
    with pytest.raises(DriverError, match="allowed: x86_64, i686"):
        argv(spec(architecture="aarch64"))


def test_no_video_device():
    devices = values(argv(spec(hw={"hw_video_model": "none"})), "-device")
    assert not any(d in ("VGA", "cirrus-vga", "virtio-vga") for d in devices)


def test_rng_and_windows_clock():
    av = argv(spec(hw={"hw_rng_model": "virtio"}, os_type="windows"))
    assert "rng-random,id=rng0,filename=/dev/urandom" in values(av, "-object")
    assert "virtio-rng-pci,rng=rng0" in values(av, "-device")
    assert values(av, "-rtc") == ["base=localtime"]


@pytest.mark.parametrize("hw,field", [
    ({"hw_disk_bus": "floppy"}, "hw_disk_bus"),
    ({"hw_video_model": "3dfx"}, "hw_video_model"),
    ({"hw_rng_model": "hwrng"}, "hw_rng_model"),
    ({"hw_machine_type": "isapc"}, "hw_machine_type"),
    ({"hw_pointer_model": "lightpen"}, "hw_pointer_model"),
])
def test_unsupported_hw_properties_name_the_allowed_values(hw, field):
    with pytest.raises(DriverError) as err:
        argv(spec(hw=hw))
    assert field in err.value.message and "allowed" in err.value.message


def test_versioned_machine_types():
    assert values(argv(spec(hw={"hw_machine_type": "pc-q35-7.2"})), "-machine") == ["pc-q35-7.2"]


def test_commas_in_paths_and_names_are_escaped():
    paths = InstancePaths(Path("/srv/a,b") / UUID)
    av = build_argv(spec(name="x,y"), paths, qemu_binary="q", accel="tcg")
    assert values(av, "-name") == ["guest=x,,y"]
    assert values(av, "-drive")[0].startswith(f"file=/srv/a,,b/{UUID}/disk,if=none")


def test_incoming_cpu_model_kvm():
    av = build_argv(spec(), PATHS, qemu_binary="q", accel="kvm", cpu_model="qemu64",
                    incoming=True)
    assert values(av, "-incoming") == ["defer"]
    assert values(av, "-cpu") == ["qemu64"]
    assert values(av, "-accel") == ["kvm"]
    with pytest.raises(DriverError, match="allowed: kvm, tcg"):
        build_argv(spec(), PATHS, qemu_binary="q", accel="hvf")


def test_tiny_flavor_is_refused():
    with pytest.raises(DriverError, match="flavor too small"):
        argv(spec(memory_mb=8))


# --- other pure pieces -----------------------------------------------------------

def test_qemu_error_line_picks_qemus_reason():
    stderr = ("qemu-system-x86_64: warning: host doesn't support requested feature\n"
              "qemu-system-x86_64: -drive file=/x/cd.iso,if=none: Could not open "
              "'/x/cd.iso': No such file or directory\n")
    assert qemu_error_line(stderr).startswith("qemu-system-x86_64: -drive file=/x/cd.iso")
    assert qemu_error_line("") == "no error text"
    assert qemu_error_line("something odd\n") == "something odd"


def test_trim_log_keeps_the_tail_on_a_line_boundary(tmp_path):
    log = tmp_path / "console.log"
    lines = [f"line {i:05d}\n".encode() for i in range(2000)]
    log.write_bytes(b"".join(lines))
    assert not trim_log(log, 10 ** 6)
    assert trim_log(log, 8192)
    data = log.read_bytes()
    assert len(data) <= 4096 and data.endswith(lines[-1])
    assert data.split(b"\n")[0].startswith(b"line ")  # starts on a whole line
    # An O_APPEND writer (like QEMU) keeps writing at the new end.
    with open(log, "ab") as f:
        f.write(b"after\n")
    assert log.read_bytes().endswith(lines[-1] + b"after\n")
    assert not trim_log(tmp_path / "missing.log", 4096)


def test_instance_record_round_trip_and_checksum(tmp_path):
    s = spec(kernel=KERNEL, ramdisk=RAMDISK, config_drive=Path("/cd.iso"),
             nics=(Nic("p1", "52:54:00:00:00:01", "sbx-t1", bridge="sbx-b1"),),
             hw={"hw_disk_bus": "scsi"})
    path = tmp_path / "instance.json"
    qemu_record.write(path, s)
    assert qemu_record.read_spec(path) == s
    body = qemu_record.read(path)
    assert body["taps"] == ["sbx-t1"] and body["images"] == ["i1", "k1", "r1"]
    doc = json.loads(path.read_text())
    doc["body"]["taps"] = ["eth0"]
    path.write_text(json.dumps(doc))
    assert qemu_record.read(path) is None  # tampered: checksum mismatch
    path.write_text("{not json")
    assert qemu_record.read(path) is None


def test_version_number():
    assert parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)") == 7002022
    assert parse_version("QEMU emulator version 8.1") == 8001000
    assert parse_version("nonsense") == 0
