"""The QEMU compute driver end to end: the tiny guest booted through
QemuDriver under TCG, the way the compute agent will drive it.

One server goes through its life in order (the tests share it): spawn with
a config drive and a tap in a test bridge (with DHCP from a test namespace
on that bridge, then SSH in with the injected key), pause, snapshot,
re-adoption by a second driver, suspend/resume, reboots, power off/on, a
killed QEMU, destroy. Separate tests cover a bad spec and a kernel-only boot
whose guest powers itself off. Every host object carries the sbx prefix and
a random suffix and is removed at teardown, pass or fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from stackbox.compute.drivers import taps
from stackbox.compute.drivers.base import DriverError, ImageFile, InstanceSpec, Nic, PowerState
from stackbox.compute.drivers.qemu import QemuDriver
from stackbox.compute.imagecache import ImageCache
from stackbox.guest import configdrive
from tests.e2e.guests import MARK, QEMU, die_with_parent

pytestmark = pytest.mark.e2e
BOOT = f"{MARK} boot"
READY = f"{MARK} ready"
WAIT = 120  # generous: other helpers load the same two cores
LAN_GW = "10.78.0.1"  # inside the test's own namespace only
GUEST_IP = "10.78.0.5"
GUEST_MAC = "52:54:00:5b:00:01"


def _file_stream(path: Path):
    def open_stream():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
    return open_stream


def _cache(cache: ImageCache, image_id: str, path: Path, fmt: str) -> ImageFile:
    """Fetch a file into the image cache as the agent does from Glance."""
    data = path.read_bytes()
    cached = cache.fetch(image_id, os_hash_value=hashlib.sha512(data).hexdigest(),
                         size=len(data), open_stream=_file_stream(path))
    return ImageFile(image_id, cached, fmt, size=len(data))


def _qemu_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


class Env:
    def __init__(self, root: Path, tiny, suffix: str):
        self.root = root
        self.instances = root / "instances"
        self.driver = self.new_driver()
        self.cache = ImageCache(root / "cache")
        self.kernel = _cache(self.cache, "tiny-kernel", tiny.kernel, "aki")
        self.ramdisk = _cache(self.cache, "tiny-ramdisk", tiny.initramfs, "ari")
        self.cmdline = tiny.cmdline
        self.suffix = suffix
        self.bridge = f"sbx-qb{suffix}" if os.geteuid() == 0 else ""
        self.netns = ""  # set when the test LAN (DHCP + SSH) is up
        self.procs: list[subprocess.Popen] = []
        self.key = root / "id_ed25519"

    def setup_network(self) -> None:
        """A bridge for the guest's tap and, when dnsmasq and ssh exist, a
        namespace on the bridge (through a veth) with DHCP: the host's own
        routing is untouched and no traffic leaves bridge and namespace."""
        if not self.bridge:
            return
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not (os.path.exists(dnsmasq) and shutil.which("ssh") and shutil.which("ssh-keygen")):
            return
        ns, outer, inner = f"sbx-qn{self.suffix}", f"sbx-qv{self.suffix}", f"sbx-qw{self.suffix}"
        _ip("netns", "add", ns)
        self.netns = ns
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{LAN_GW}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True, timeout=30)
        with open(self.root / "dnsmasq.log", "wb") as out:
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, dnsmasq, "--no-daemon", "--port=0",
                 "--no-resolv", "--no-hosts", "--bind-interfaces", f"--interface={inner}",
                 "--except-interface=lo", f"--dhcp-range={GUEST_IP},static,255.255.255.0",
                 f"--dhcp-host={GUEST_MAC},{GUEST_IP}",
                 f"--dhcp-leasefile={self.root}/leases"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent))

    def ssh(self, command: str) -> str:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, "ssh", "-i", str(self.key),
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
             f"root@{GUEST_IP}", command], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def new_driver(self) -> QemuDriver:
        # Short grace periods: the tiny guest has no acpid and ignores ACPI.
        return QemuDriver(self.instances, accel="tcg", soft_reboot_grace=2,
                          stop_timeout=10, qmp_timeout=20, start_timeout=60)

    def cleanup(self) -> None:
        for proc in self.procs:  # `ip netns exec` execs: the pid is dnsmasq's
            proc.kill()
            proc.wait(10)
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], timeout=30, capture_output=True)
        for uid in self.driver.list_instances():
            try:
                self.driver.destroy(uid)
            except DriverError as exc:
                print(f"cleanup: {exc.message}")
        for pid in _qemu_pids(str(self.instances)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Exactly the names this module made (taps, veth, bridge), nobody else's.
        for kind in "txyvb":
            name = f"sbx-q{kind}{self.suffix}"
            if os.path.exists(f"/sys/class/net/{name}"):
                subprocess.run(["ip", "link", "del", name], timeout=30, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def env(tiny_image):
    if QEMU is None or shutil.which("qemu-img") is None:
        pytest.skip("qemu-system-x86_64 and qemu-img are needed")
    if shutil.which("genisoimage") is None:
        pytest.skip("genisoimage not installed")
    import tempfile
    suffix = uuid.uuid4().hex[:6]
    e = Env(Path(tempfile.mkdtemp(prefix="sbx-qd-")), tiny_image, suffix)
    try:
        e.setup_network()
        yield e
    finally:
        e.cleanup()


def _log(env: Env, uid: str) -> str:
    return env.driver.console_output(uid)


def _wait_count(env: Env, uid: str, marker: str, count: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _log(env, uid).count(marker) >= count:
            return
        time.sleep(0.3)
    pytest.fail(f"{marker!r} not seen {count} times in {timeout} s:\n{_log(env, uid)}")


def _serial_alive(path: Path, timeout: float = 30) -> bool:
    """The guest's getty answers on the serial socket: the guest runs."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.settimeout(1)
        seen = b""
        while time.monotonic() < deadline:
            s.sendall(b"\r")
            try:
                seen += s.recv(4096)
            except socket.timeout:
                continue
            if b"login:" in seen:
                return True
    return False


@pytest.fixture(scope="module")
def server(env, tiny_image):
    """The spec of the one server the ordered tests below share."""
    uid = str(uuid.uuid4())
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2Er3cUGa4bkGGv8SzKbIqXBCh/UFn0mmI0tg9jZ4cE e2e"
    if env.netns:
        key = env.key.with_suffix(".pub").read_text()
    files = configdrive.openstack_layout(
        {"uuid": uid, "name": "drv", "hostname": "drv.novalocal",
         "public_keys": {"e2e-key": key}}, None, None, None)
    iso = configdrive.build_config_drive(env.driver.config_drive_path(uid), files)
    # An AMI-style root image: a small qcow2 in the cache plus kernel+ramdisk.
    base = env.root / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"],
                   check=True, timeout=30)
    image = _cache(env.cache, "root-image", base, "qcow2")
    nics = ()
    if env.bridge:
        nics = (Nic("port-1", GUEST_MAC, f"sbx-qt{env.suffix}", bridge=env.bridge, mtu=1450),)
    return InstanceSpec(uuid=uid, name="drv", vcpus=1, memory_mb=128, root_gb=1,
                        ephemeral_gb=1, swap_mb=32, image=image, kernel=env.kernel,
                        ramdisk=env.ramdisk, kernel_cmdline=env.cmdline,
                        config_drive=iso, nics=nics)


def test_spawn_boots_with_config_drive(env, server):
    env.driver.spawn(server)
    uid = server.uuid
    assert env.driver.power_state(uid) is PowerState.RUNNING
    _wait_count(env, uid, READY, 1)
    log = _log(env, uid)
    assert f"{MARK} metadata source=configdrive uuid={uid}" in log, log
    assert f"{MARK} ssh-key installed name=e2e-key" in log, log
    assert env.driver.list_instances() == [uid]
    assert env.driver.images_in_use() == {"root-image", "tiny-kernel", "tiny-ramdisk"}
    paths = env.driver.paths(uid)
    info = subprocess.run(["qemu-img", "info", "-U", str(paths.root_disk)], check=True,
                          capture_output=True, text=True, timeout=30).stdout
    assert "virtual size: 1 GiB" in info and "root-image" in info  # grown overlay
    if env.netns:
        # DHCP answered the port's MAC through tap, bridge and veth, and the
        # key from the config drive lets us in.
        assert f"{MARK} network eth0 {GUEST_IP}/24" in log, log
        assert env.ssh("hostname").strip() == "drv"
    if env.bridge:
        tap = f"sbx-qt{env.suffix}"
        assert taps.master(tap) == env.bridge
        assert Path(f"/sys/class/net/{tap}/mtu").read_text().strip() == "1450"
        ipv6 = Path(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6")
        assert not ipv6.exists() or ipv6.read_text().strip() == "1"
    # Spawning again is a no-op, not a second QEMU.
    env.driver.spawn(server)
    assert len(_qemu_pids(f"-uuid\0{uid}")) == 1
    assert env.driver.console_output(uid, length=2).count("\n") <= 2


def test_consoles_are_reachable(env, server):
    vnc = env.driver.console_endpoint(server.uuid, "vnc")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(vnc.unix_path))
        assert s.recv(12).startswith(b"RFB 003.")
    serial = env.driver.console_endpoint(server.uuid, "serial")
    assert _serial_alive(serial.unix_path)
    with pytest.raises(DriverError, match="allowed: serial, vnc"):
        env.driver.console_endpoint(server.uuid, "spice")


def test_pause_and_unpause(env, server):
    env.driver.pause(server.uuid)
    assert env.driver.power_state(server.uuid) is PowerState.PAUSED
    env.driver.pause(server.uuid)  # idempotent
    env.driver.unpause(server.uuid)
    assert env.driver.power_state(server.uuid) is PowerState.RUNNING


def test_snapshot_is_a_flat_qcow2(env, server):
    dest = env.root / "snap" / "snap.qcow2"
    assert env.driver.snapshot(server.uuid, dest) == "qcow2"
    subprocess.run(["qemu-img", "check", str(dest)], check=True, capture_output=True,
                   timeout=60)
    info = subprocess.run(["qemu-img", "info", str(dest)], check=True, capture_output=True,
                          text=True, timeout=30).stdout
    assert "backing file" not in info and "virtual size: 1 GiB" in info
    assert env.driver.power_state(server.uuid) is PowerState.RUNNING  # not left paused


def test_new_driver_readopts_and_suspends_resumes(env, server):
    uid = server.uuid
    env.driver = env.new_driver()  # as after an agent restart
    assert env.driver.list_instances() == [uid]
    assert env.driver.power_state(uid) is PowerState.RUNNING
    boots = _log(env, uid).count(BOOT)
    env.driver.suspend(uid)
    paths = env.driver.paths(uid)
    assert env.driver.power_state(uid) is PowerState.SUSPENDED
    assert paths.saved_state.stat().st_size > 1 << 20
    assert _qemu_pids(f"-uuid\0{uid}") == []
    env.driver.suspend(uid)  # idempotent
    env.driver.power_on(server)
    assert env.driver.power_state(uid) is PowerState.RUNNING
    assert not paths.saved_state.exists()
    assert _serial_alive(paths.serial)
    if env.netns:
        env.ssh("true")  # the network came back with the guest
    assert _log(env, uid).count(BOOT) == boots  # resumed, not rebooted


def test_hard_and_soft_reboot(env, server):
    uid = server.uuid
    boots = _log(env, uid).count(BOOT)
    env.driver.reboot(uid, hard=True)
    _wait_count(env, uid, BOOT, boots + 1)
    # Soft: ACPI first (ignored by tiny), then a reset after the grace period.
    env.driver.reboot(uid, hard=False)
    _wait_count(env, uid, BOOT, boots + 2)
    assert env.driver.power_state(uid) is PowerState.RUNNING


def test_power_off_falls_back_to_hard_stop_then_power_on(env, server):
    uid = server.uuid
    started = time.monotonic()
    env.driver.power_off(uid, timeout=3)
    assert time.monotonic() - started < 3 + 15
    assert env.driver.power_state(uid) is PowerState.SHUTDOWN
    assert _qemu_pids(f"-uuid\0{uid}") == []
    env.driver.power_off(uid, timeout=3)  # idempotent
    with pytest.raises(DriverError, match="not running"):
        env.driver.pause(uid)
    boots = _log(env, uid).count(BOOT)
    env.driver.power_on(server)
    _wait_count(env, uid, BOOT, boots + 1)
    assert env.driver.power_state(uid) is PowerState.RUNNING


def test_killed_qemu_is_reported_crashed(env, server):
    uid = server.uuid
    [pid] = _qemu_pids(f"-uuid\0{uid}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _qemu_pids(f"-uuid\0{uid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.driver.power_state(uid) is PowerState.CRASHED
    # reboot of a stopped server starts it from instance.json, as nova does.
    env.driver.reboot(uid, hard=True)
    assert env.driver.power_state(uid) is PowerState.RUNNING


def test_destroy_leaves_nothing(env, server):
    uid = server.uuid
    env.driver.destroy(uid)
    assert _qemu_pids(f"-uuid\0{uid}") == []
    assert not (env.instances / uid).exists()
    assert env.driver.list_instances() == []
    assert env.driver.power_state(uid) is PowerState.NOSTATE
    if env.bridge:
        assert not taps.exists(f"sbx-qt{env.suffix}")
    env.driver.destroy(uid)  # idempotent


def test_bad_spec_reports_qemus_line_and_leaves_no_process(env):
    uid = str(uuid.uuid4())
    missing = env.root / "no-such-config.iso"
    nics = ()
    tap = f"sbx-qx{env.suffix}"
    if env.bridge:
        nics = (Nic("port-x", "52:54:00:5b:00:09", tap, bridge=env.bridge),)
    spec = InstanceSpec(uuid=uid, name="bad", vcpus=1, memory_mb=128, root_gb=0,
                        kernel=env.kernel, ramdisk=env.ramdisk, kernel_cmdline=env.cmdline,
                        config_drive=missing, nics=nics)
    with pytest.raises(DriverError) as err:
        env.driver.spawn(spec)
    message = err.value.message
    assert "qemu-system-x86_64:" in message and "Could not open" in message, message
    assert str(missing) in message
    assert _qemu_pids(f"-uuid\0{uid}") == []
    assert env.driver.power_state(uid) is PowerState.SHUTDOWN
    if env.bridge:
        assert not taps.exists(tap)
    env.driver.destroy(uid)
    assert not (env.instances / uid).exists()


def test_kernel_only_boot_and_guest_poweroff_is_reaped(env):
    """How the tiny image boots from Glance: kernel_id + ramdisk_id, no root
    disk at all (a 0 GiB flavor), no NIC. Its user-data powers the guest
    off: QEMU stays in the `shutdown` run state until housekeeping reaps it."""
    uid = str(uuid.uuid4())
    files = configdrive.openstack_layout({"uuid": uid, "name": "k"},
                                         b"#!/bin/sh\nsync\npoweroff -f\n", None, None)
    iso = configdrive.build_config_drive(env.driver.config_drive_path(uid), files)
    spec = InstanceSpec(uuid=uid, name="k", vcpus=1, memory_mb=128, root_gb=0,
                        kernel=env.kernel, ramdisk=env.ramdisk, kernel_cmdline=env.cmdline,
                        config_drive=iso)
    try:
        env.driver.spawn(spec)
        _wait_count(env, uid, f"{MARK} metadata source=configdrive uuid={uid}", 1)
        assert not env.driver.paths(uid).root_disk.exists()
        with pytest.raises(DriverError, match="no root disk"):
            env.driver.snapshot(uid, env.root / "x.qcow2")
        deadline = time.monotonic() + WAIT
        while env.driver.power_state(uid) is not PowerState.SHUTDOWN:
            assert time.monotonic() < deadline, _log(env, uid)
            time.sleep(0.3)
        assert len(_qemu_pids(f"-uuid\0{uid}")) == 1  # stopped, not yet reaped
        assert env.driver.housekeeping()["reaped"] == [uid]
        assert _qemu_pids(f"-uuid\0{uid}") == []
        assert env.driver.power_state(uid) is PowerState.SHUTDOWN  # not CRASHED
    finally:
        env.driver.destroy(uid)
    assert _qemu_pids(f"-uuid\0{uid}") == []


@pytest.mark.parametrize("hw", [
    {"hw_machine_type": "q35"},
    {"hw_disk_bus": "scsi", "hw_video_model": "virtio", "hw_rng_model": "virtio",
     "hw_vif_model": "e1000"},
    {"hw_disk_bus": "sata", "hw_video_model": "qxl", "hw_pointer_model": "ps2mouse"},
    {"hw_disk_bus": "ide", "hw_machine_type": "q35", "hw_video_model": "cirrus"},
    {"hw_disk_bus": "ide", "hw_video_model": "none", "hw_vif_model": "rtl8139"},
], ids=lambda hw: "-".join(f"{k[3:]}={v}" for k, v in hw.items()))
def test_hardware_variants_start(env, hw):
    """QEMU itself accepts every device layout the command line can build
    (the unit tests only see strings): all disks, a CD-ROM, a NIC."""
    uid = str(uuid.uuid4())
    iso = configdrive.build_config_drive(
        env.driver.config_drive_path(uid),
        configdrive.openstack_layout({"uuid": uid}, None, None, None))
    nics = (Nic("port-v", "52:54:00:5b:00:0a", f"sbx-qy{env.suffix}"),) if env.bridge else ()
    spec = InstanceSpec(uuid=uid, name="hw", vcpus=2, memory_mb=128, root_gb=1,
                        ephemeral_gb=1, swap_mb=8, kernel=env.kernel, ramdisk=env.ramdisk,
                        kernel_cmdline=env.cmdline, config_drive=iso, nics=nics, hw=hw)
    try:
        env.driver.spawn(spec)
        assert env.driver.power_state(uid) is PowerState.RUNNING
    finally:
        env.driver.destroy(uid)
    assert _qemu_pids(f"-uuid\0{uid}") == []
