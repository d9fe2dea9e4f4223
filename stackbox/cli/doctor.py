"""`stackbox doctor`: check that this host can run a stackbox cloud.

Each check is a small function registered with @check; run_doctor runs them
in registration order and prints one line each:

    OK   <check>: <detail>
    WARN <check>: <detail>
         consequence: <what will not work>
         fix: <exact command>

Checks that create host objects (bridge, netns, nft table) delete them in a
`finally`, so a failing check leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TextIO

from stackbox.common import hostops

OK, WARN, FAIL = "OK", "WARN", "FAIL"
GiB = 1024 ** 3

# binary -> Debian package that ships it, for "fix: apt-get install ...".
PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "dnsmasq": "dnsmasq-base",
    "ethtool": "ethtool",
    "haproxy": "haproxy",
    "timedatectl": "systemd",
}


@dataclass
class Result:
    status: str
    detail: str
    consequence: str = ""
    fix: str = ""
    name: str = ""  # overrides the check's name (checks that report several)


@dataclass
class Check:
    name: str
    func: Callable[..., "Result | Iterable[Result]"]


CHECKS: list[Check] = []


def check(name: str):
    """Register a check; the order of registration is the order of output."""
    def register(func):
        CHECKS.append(Check(name, func))
        return func
    return register


# --- helpers ------------------------------------------------------------------

def missing(binary: str, consequence: str, status: str = FAIL) -> Result:
    package = PACKAGES.get(binary, binary)
    return Result(status, f"{binary} not found in PATH (Debian package {package})",
                  consequence, f"apt-get install {package}")


def which(binary: str) -> str | None:
    return shutil.which(binary)


def short_error(exc: Exception) -> str:
    if isinstance(exc, hostops.CommandError):
        text = exc.stderr.decode(errors="replace").strip()
        return text.splitlines()[-1] if text else f"exit {exc.returncode}"
    return str(exc)


def first_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else ""


def scratch_name(prefix: str) -> str:
    # pid-based so concurrent doctors cannot collide; <= 15 chars for ifnames
    return f"{prefix}{os.getpid()}"


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- checks -------------------------------------------------------------------

@check("python")
def check_python(settings) -> Result:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 11):
        return Result(OK, f"Python {version}")
    return Result(FAIL, f"Python {version} is older than 3.11",
                  "stackbox does not start", "apt-get install python3 (Debian 12 or later)")


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


@check("privileges")
def check_privileges(settings) -> Result:
    cap_net_admin = bool(_capabilities() & (1 << 12))
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if cap_net_admin:
        return Result(OK, f"running as {who} with CAP_NET_ADMIN")
    return Result(FAIL, f"running as {who} without CAP_NET_ADMIN",
                  "cannot create bridges, namespaces, taps or firewall rules",
                  "sudo stackbox doctor (run stackbox as root)")


@check("/dev/net/tun")
def check_tun(settings) -> Result:
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return Result(FAIL, f"cannot open /dev/net/tun ({exc.strerror})",
                      "VMs get no network interfaces (tap devices)", "modprobe tun")
    return Result(OK, "opens read-write")


@check("bridge")
def check_bridge(settings) -> Result:
    ip = which("ip")
    if not ip:
        return missing("ip", "no virtual networks")
    name = scratch_name("sbx-dr-")
    try:
        hostops.run([ip, "link", "add", name, "type", "bridge"], timeout=10)
        return Result(OK, f"created and deleted bridge {name}")
    except (hostops.CommandError, hostops.CommandTimeout) as exc:
        return Result(FAIL, f"cannot create a bridge: {short_error(exc)}",
                      "no virtual networks", "modprobe bridge")
    finally:
        hostops.run([ip, "link", "del", name], timeout=10, check=False)


@check("netns")
def check_netns(settings) -> Result:
    ip = which("ip")
    if not ip:
        return missing("ip", "no routers or DHCP namespaces")
    name = scratch_name("sbx-dr-")
    try:
        hostops.run([ip, "netns", "add", name], timeout=10)
        return Result(OK, f"created and deleted namespace {name}")
    except (hostops.CommandError, hostops.CommandTimeout) as exc:
        return Result(FAIL, f"cannot create a network namespace: {short_error(exc)}",
                      "no routers or DHCP namespaces",
                      "run on a kernel with CONFIG_NET_NS and mount --make-shared /run")
    finally:
        # `ip netns del` of a namespace that was never made just fails: harmless
        hostops.run([ip, "netns", "del", name], timeout=10, check=False)


@check("nftables")
def check_nftables(settings) -> Result:
    nft = which("nft")
    if not nft:
        return missing("nft", "no security groups or floating IPs")
    table = scratch_name("sbx_doctor_")
    created = False
    try:
        hostops.run([nft, "list", "tables"], timeout=10)
        hostops.run([nft, "add", "table", "inet", table], timeout=10)
        created = True
        return Result(OK, f"listed tables, created and deleted table inet {table}")
    except (hostops.CommandError, hostops.CommandTimeout) as exc:
        return Result(FAIL, f"nft does not work: {short_error(exc)}",
                      "no security groups or floating IPs", "modprobe nf_tables")
    finally:
        if created:
            hostops.run([nft, "delete", "table", "inet", table], timeout=10, check=False)


@check("bridge netfilter")
def check_bridge_netfilter(settings) -> Result:
    path = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    try:
        value = path.read_text().strip()
    except OSError:
        return Result(FAIL, "br_netfilter is not loaded",
                      "security groups cannot track connections of bridged guests",
                      "modprobe br_netfilter")
    if value != "1":
        return Result(OK, "loaded; bridge-nf-call-iptables is 0 (the network agent sets 1)")
    return Result(OK, "bridged IP traffic reaches nftables (conntrack for security groups)")


@check("ethtool")
def check_ethtool(settings) -> Result:
    if not which("ethtool"):
        return missing("ethtool", "checksum offload stays on for DHCP veths: some guests "
                       "drop the DHCP replies", status=WARN)
    return Result(OK, "present (turns tx checksum offload off on DHCP and router veths)")


def _version_check(binary: str, consequence: str, flag: str = "--version") -> Result:
    path = which(binary)
    if not path:
        return missing(binary, consequence)
    try:
        proc = hostops.run([path, flag], timeout=15)
    except (hostops.CommandError, hostops.CommandTimeout) as exc:
        return Result(FAIL, f"{path} {flag} failed: {short_error(exc)}", consequence,
                      f"apt-get install --reinstall {PACKAGES[binary]}")
    return Result(OK, f"{path}: {first_line(proc.stdout)}")


@check("qemu-system-x86_64")
def check_qemu(settings) -> Result:
    return _version_check("qemu-system-x86_64", "no VMs can start")


@check("qemu-img")
def check_qemu_img(settings) -> Result:
    return _version_check("qemu-img", "no disks can be created or converted")


def _accel_cache_dir(settings) -> Path | None:
    from stackbox.compute.drivers.accel import default_cache_dir
    data_dir = Path(settings.data_dir)
    # Doctor does not create the data dir; without one the probe is not cached.
    return default_cache_dir(data_dir) if os.access(data_dir, os.W_OK) else None


@check("kvm")
def check_kvm(settings) -> Result:
    from stackbox.compute.drivers.accel import CACHE_FILE, probe_accelerator
    if not which("qemu-system-x86_64"):
        return missing("qemu-system-x86_64", "cannot probe KVM or TCG: no VMs can start")
    cache_dir = _accel_cache_dir(settings)
    result = probe_accelerator(cache_dir=cache_dir)
    if not result.tcg_ok:
        return Result(FAIL, f"TCG does not boot a guest either: {result.reason}",
                      "no VMs can start",
                      "apt-get install --reinstall qemu-system-x86 qemu-system-data")
    if result.kvm_ok:
        return Result(OK, result.reason)
    reprobe = f"rm {cache_dir / CACHE_FILE} && stackbox doctor" if cache_dir else \
        "stackbox doctor"
    if "/dev/kvm" in result.reason:
        fix = "modprobe kvm_intel || modprobe kvm_amd (enable VT-x/AMD-V in firmware)"
    else:
        fix = (f"none on this host (KVM itself is broken): use bare metal or a hypervisor "
               f"with working nested KVM, then {reprobe}")
    return Result(WARN, f"{result.reason}", "VMs run under TCG, ~10× slower", fix)


@check("dnsmasq")
def check_dnsmasq(settings) -> Result:
    return _version_check("dnsmasq", "guests get no DHCP or DNS")


@check("haproxy")
def check_haproxy(settings) -> Result:
    if not which("haproxy"):
        return missing("haproxy", "load balancers unavailable", status=WARN)
    return _version_check("haproxy", "load balancers unavailable", flag="-v")


def _listener_pids(port: int) -> list[int]:
    """PIDs holding a listening TCP socket on `port` (from /proc, no ss)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _holds_any(proc, inodes):
            pids.append(int(proc.name))
    return sorted(pids)


def _holds_any(proc: Path, inodes: set[str]) -> bool:
    try:
        return any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir())
    except OSError:
        return False  # process gone or not ours to inspect


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def is_stackbox(argv: list[str]) -> bool:
    """`stackbox ...`, `python /usr/bin/stackbox ...` or `python -m stackbox...`."""
    if argv and os.path.basename(argv[0]) == "stackbox":
        return True
    if len(argv) > 1 and os.path.basename(argv[1]) == "stackbox":
        return True
    return len(argv) > 2 and argv[1] == "-m" and argv[2].split(".")[0] == "stackbox"


def _port_result(service: str, address: str, port: int) -> Result:
    name = f"port {service}"
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            return Result(OK, f"{address}:{port} is free", name=name)
        except OSError as exc:
            error = exc
    if error.errno != errno.EADDRINUSE:
        return Result(FAIL, f"cannot bind {address}:{port} ({error.strerror})",
                      f"the {service} API cannot start",
                      "set [api] bind_address to an address of this host", name=name)
    holders = [(pid, _argv(pid)) for pid in _listener_pids(port)]
    if holders and all(is_stackbox(argv) for _, argv in holders):
        return Result(OK, f"{address}:{port} held by running stackbox (pid "
                      f"{', '.join(str(p) for p, _ in holders)})", name=name)
    who = "; ".join(f"pid {p}: {' '.join(a)[:60]}" for p, a in holders) or "unknown process"
    return Result(FAIL, f"{address}:{port} in use by {who}",
                  f"the {service} API cannot start",
                  f"stop the process on port {port} or change [{service}] port", name=name)


@check("ports")
def check_ports(settings) -> list[Result]:
    address = settings.api.bind_address
    return [_port_result(service, address, port)
            for service, port in settings.service_ports().items()]


@check("disk")
def check_disk(settings) -> Result:
    where = existing_ancestor(settings.data_dir)
    free = shutil.disk_usage(where).free
    detail = f"{free / GiB:.1f} GiB free on {where}"
    fix = f"free space on {where} or set data_dir to a larger filesystem"
    if free < GiB:
        return Result(FAIL, detail, "images and VM disks cannot be written", fix)
    if free < 10 * GiB:
        return Result(WARN, detail, "room for only a few images and VM disks", fix)
    return Result(OK, detail)


@check("data dir")
def check_data_dir(settings) -> Result:
    data_dir = Path(settings.data_dir)
    target = data_dir if data_dir.exists() else existing_ancestor(data_dir)
    fix = f"mkdir -p {data_dir} && chown $(id -u) {data_dir}, or set data_dir"
    if not target.is_dir():
        return Result(FAIL, f"{target} is not a directory", "stackbox cannot keep state", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".sbx-doctor-"):
            pass
    except OSError as exc:
        return Result(FAIL, f"cannot write in {target} ({exc.strerror})",
                      "stackbox cannot keep state", fix)
    if target != data_dir:
        return Result(OK, f"{data_dir} does not exist yet; {target} is writable")
    return Result(OK, f"{data_dir} is writable")


XATTR_SIZES = (64 * 1024, 16 * 1024, 4 * 1024)


def largest_xattr(path: str, sizes: Iterable[int] = XATTR_SIZES) -> int:
    """Largest single user.* value that fits on `path`'s file; 0 if none.

    Tries the listed sizes, then binary-searches below the smallest: ext4
    without ea_inode holds just under 4 KiB (the block has headers too).
    """
    def fits(n: int) -> bool:
        try:
            os.setxattr(path, "user.sbx_doctor", b"x" * n)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM):
                raise
            return False  # ENOSPC / E2BIG / ERANGE: too big
        os.removexattr(path, "user.sbx_doctor")
        return True
    sizes = sorted(sizes, reverse=True)
    for n in sizes:
        if fits(n):
            return n
    lo, hi = 0, sizes[-1]  # fits(lo) holds trivially, fits(hi) failed
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@check("xattr")
def check_xattr(settings) -> Result:
    where = existing_ancestor(settings.data_dir)
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".sbx-doctor-") as f:
            size = largest_xattr(f.name)
    except OSError as exc:
        return Result(FAIL, f"no user xattrs on {where} ({exc.strerror})",
                      "metadata stackbox keeps in extended attributes cannot be stored",
                      f"put data_dir on ext4/xfs/btrfs, or mount -o remount,user_xattr {where}")
    if size == 0:
        return Result(FAIL, f"user xattrs on {where} hold no value at all",
                      "metadata stackbox keeps in extended attributes cannot be stored",
                      "put data_dir on ext4 (tune2fs -O ea_inode), xfs or btrfs")
    label = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"
    return Result(OK, f"user xattrs on {where}; largest single value: {label}")


def mount_of(path: str, mountinfo: str) -> tuple[str, str, str] | None:
    """(mount point, file system type, major:minor) of the mount that holds
    the absolute `path`, from /proc/self/mountinfo's text: the longest mount
    point above it, the later line when one is mounted over another."""
    best = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        majmin, point = fields[2], fields[4].replace("\\040", " ")
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype, majmin)
    return best


def ext4_has_journal(majmin: str, *, jbd2: Path = Path("/proc/fs/jbd2"),
                     sys_block: Path = Path("/sys/dev/block")) -> bool:
    """Whether the ext4 on block device `majmin` (e.g. "254:0") has a journal:
    jbd2 lists every journal it runs as <device>-8."""
    name = (sys_block / majmin).resolve().name
    return (jbd2 / f"{name}-8").is_dir()


@check("object store file system")
def check_object_fs(settings) -> Result:
    where = existing_ancestor(Path(settings.data_dir) / "objects").resolve()
    try:
        found = mount_of(str(where), Path("/proc/self/mountinfo").read_text())
    except OSError as exc:
        return Result(WARN, f"cannot tell the file system of {where} ({exc.strerror})",
                      "small-object writes may be slow on some file systems",
                      "put data_dir on XFS or on ext4 with a journal")
    if found is None:
        return Result(OK, f"{where}: no mount found above it")
    point, fstype, majmin = found
    if fstype == "ext4" and not ext4_has_journal(majmin):
        return Result(WARN, f"{where} is on ext4 without a journal (mounted on {point})",
                      "the kernel scans the inodes deleted in the last minutes for "
                      "every new file: on the benchmark machine a create took 230-810 us "
                      "after many deletes (20 us on XFS), and a small object PUT 0.45 ms "
                      "more kernel CPU",
                      "put data_dir on XFS, or add a journal: tune2fs -O has_journal "
                      "<device> (while unmounted)")
    return Result(OK, f"{where} is on {fstype} (mounted on {point})")


@check("clock")
def check_clock(settings) -> Result:
    fix = "apt-get install systemd-timesyncd && timedatectl set-ntp true"
    consequence = "token expiry and TLS checks may be off"
    tdc = which("timedatectl")
    if not tdc:
        return Result(WARN, "cannot tell: timedatectl not found (Debian package systemd)",
                      consequence, fix)
    try:
        proc = hostops.run([tdc, "show", "-p", "NTPSynchronized", "--value"], timeout=10)
    except (hostops.CommandError, hostops.CommandTimeout) as exc:
        return Result(WARN, f"cannot tell: {short_error(exc)}", consequence,
                      "check the clock by hand: chronyc tracking or ntpq -p")
    value = proc.stdout.decode().strip()
    if value == "yes":
        return Result(OK, "system clock synchronized (NTP)")
    return Result(WARN, f"system clock not synchronized (NTPSynchronized={value})",
                  consequence, fix)


@check("novnc")
def check_novnc(settings) -> Result:
    from stackbox.compute.consoleproxy import NOVNC_CANDIDATES, find_novnc
    found = find_novnc(settings.compute.novnc_dir)
    if found:
        return Result(OK, f"noVNC web client in {found}")
    return Result(WARN, f"noVNC not found in {', '.join(map(str, NOVNC_CANDIDATES))}",
                  "console URLs (openstack console url show --novnc) open no page; "
                  "serial consoles still work", "make novnc")


# --- running and printing -----------------------------------------------------

def run_check(item: Check, settings) -> list[Result]:
    """Run one check; a crashing check is reported, never fatal to doctor."""
    try:
        produced = item.func(settings)
    except Exception as exc:  # a bug in one check must not hide the others
        produced = Result(FAIL, f"check crashed: {type(exc).__name__}: {exc}",
                          "this part of the host was not checked",
                          "report a stackbox bug with this output")
    results = [produced] if isinstance(produced, Result) else list(produced)
    for r in results:
        r.name = r.name or item.name
    return results


def format_result(r: Result) -> list[str]:
    lines = [f"{r.status:<4} {r.name}: {r.detail}"]
    if r.status != OK:
        lines.append(f"     consequence: {r.consequence or 'unknown'}")
        lines.append(f"     fix: {r.fix or 'none known'}")
    return lines


def exit_code(results: Iterable[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def run_doctor(settings, *, out: TextIO = sys.stdout,
               checks: list[Check] | None = None) -> int:
    results: list[Result] = []
    for item in CHECKS if checks is None else checks:
        for r in run_check(item, settings):
            results.append(r)
            print("\n".join(format_result(r)), file=out, flush=True)
    return exit_code(results)
