"""Decide whether guests run under KVM or TCG by booting something real.

Opening /dev/kvm proves nothing: on nested hosts the device answers ioctls
while guests spin with no output or die on an emulation failure
(`lock cmpxchg16b`).  A 16-bit boot sector never executes such instructions
and passes under broken KVM, so the KVM probe boots a real Linux kernel with
no root fs and waits for the "Unable to mount root fs" panic: reaching it
means the kernel went through its whole early boot (SMP, timers, atomics).
The boot sector is still a good TCG check: it needs no kernel and takes
~0.1 s.

The result is cached per (qemu version, host kernel release) because the
failing KVM path costs the full timeout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stackbox.common import hostops

log = logging.getLogger(__name__)

CACHE_FILE = "accel-probe.json"
KERNEL_SUBDIR = "probe-kernel"
# Debian metapackage whose dependency names the current cloud kernel.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BOOT_MARKER = "SBX-ACCEL-PROBE-OK"
# Printed by any Linux kernel that finished early boot and found no root fs.
KERNEL_MARKER = "Unable to mount root fs"
DEBUG_EXIT_PORT = 0xF4


@dataclass(frozen=True)
class AccelResult:
    accel: str  # "kvm" or "tcg"
    kvm_ok: bool
    reason: str  # one human line: why KVM is or is not used
    tcg_ok: bool


def default_cache_dir(data_dir: Path) -> Path:
    """Where doctor and the compute driver share the probe cache."""
    return Path(data_dir) / "cache" / "accel"


# --- guest images and command lines -----------------------------------------

def boot_sector_image(marker: str = BOOT_MARKER) -> bytes:
    """A 512-byte MBR that prints `marker` on COM1 then exits QEMU.

    Real-mode code loaded at 0x7c00; exits through isa-debug-exit so QEMU
    stops by itself instead of waiting for the timeout.
    """
    text = (marker + "\r\n").encode("ascii") + b"\0"
    code = bytearray(b"\xfa\x31\xc0\x8e\xd8")  # cli; xor ax,ax; mov ds,ax
    si_imm = len(code) + 1
    code += b"\xbe\x00\x00"  # mov si, <text>
    code += b"\xba\xf8\x03"  # mov dx, 0x3f8 (COM1 data)
    loop = len(code)
    code += b"\xac\x84\xc0\x74\x03\xee"  # lodsb; test al,al; jz done; out dx,al
    code += bytes([0xEB, (loop - (len(code) + 2)) & 0xFF])  # jmp loop
    code += bytes([0xB0, 0x10, 0xE6, DEBUG_EXIT_PORT])  # done: out 0xf4, 0x10
    code += b"\xf4\xeb\xfd"  # hlt; jmp $-1 (only if no debug-exit device)
    code[si_imm:si_imm + 2] = (0x7C00 + len(code)).to_bytes(2, "little")
    code += text
    if len(code) > 510:
        raise ValueError("boot sector marker too long")
    return bytes(code) + bytes(510 - len(code)) + b"\x55\xaa"


def _base_argv(qemu: str, accel: str, serial_log: Path, pidfile: Path,
               memory_mib: int) -> list[str]:
    # -nodefaults/-no-user-config: no host config or devices can change the
    # outcome; serial to a file so output survives a timeout.
    return [qemu, "-accel", accel, "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-m", str(memory_mib), "-serial", f"file:{serial_log}",
            "-pidfile", str(pidfile)]


def boot_sector_argv(qemu: str, accel: str, image: Path, serial_log: Path,
                     pidfile: Path) -> list[str]:
    return _base_argv(qemu, accel, serial_log, pidfile, 16) + [
        "-drive", f"file={image},format=raw,if=floppy",
        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"]


def kernel_argv(qemu: str, accel: str, kernel: Path, serial_log: Path,
                pidfile: Path) -> list[str]:
    # panic=-1 + -no-reboot: the root-fs panic makes QEMU exit at once.
    return _base_argv(qemu, accel, serial_log, pidfile, 128) + [
        "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]


# --- running QEMU -------------------------------------------------------------

@dataclass
class _Run:
    output: str  # guest serial output
    stderr: str
    timed_out: bool
    seconds: float


def _kill_leftover(pidfile: Path) -> None:
    """Kill the QEMU that wrote `pidfile` if hostops left it running."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    # The pid may have been reused: only kill the process naming our pidfile.
    if str(pidfile).encode() not in cmdline:
        return
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


def _run_qemu(argv: list[str], serial_log: Path, pidfile: Path,
              timeout: float) -> _Run:
    start = time.monotonic()
    stderr, timed_out = "", False
    try:
        proc = hostops.run(argv, timeout=timeout, check=False)
        stderr = proc.stderr.decode(errors="replace")
    except hostops.CommandTimeout:
        timed_out = True
    finally:
        _kill_leftover(pidfile)
    seconds = time.monotonic() - start
    try:
        output = serial_log.read_bytes().decode(errors="replace")
    except OSError:
        output = ""
    return _Run(output, stderr, timed_out, seconds)


def _boot_sector(qemu: str, accel: str, work: Path, timeout: float) -> _Run:
    image = work / "probe-mbr.img"
    image.write_bytes(boot_sector_image())
    log_ = work / f"serial-mbr-{accel}.log"
    argv = boot_sector_argv(qemu, accel, image, log_, work / "qemu.pid")
    return _run_qemu(argv, log_, work / "qemu.pid", timeout)


def _kernel(qemu: str, accel: str, kernel: Path, work: Path,
            timeout: float) -> _Run:
    log_ = work / f"serial-kernel-{accel}.log"
    argv = kernel_argv(qemu, accel, kernel, log_, work / "qemu.pid")
    return _run_qemu(argv, log_, work / "qemu.pid", timeout)


def describe_kvm_failure(run: _Run, timeout: float) -> str:
    """One line saying how a kernel boot under KVM failed."""
    err = run.stderr
    if "emulation failure" in err or "KVM internal error" in err:
        return "guest died with a KVM emulation failure (broken nested KVM)"
    if run.timed_out and "Linux version" not in run.output:
        return (f"guest printed no kernel output in {timeout:g} s "
                "(spinning under broken nested KVM)")
    if run.timed_out:
        return f"kernel started but did not finish booting in {timeout:g} s"
    first = next((ln for ln in err.splitlines() if ln.strip()
                  and "warning" not in ln), "")
    return f"QEMU failed under KVM: {first or 'no error text'}"[:200]


# --- probe kernel -------------------------------------------------------------

def _host_kernel() -> Path | None:
    """The host's own kernel, when readable (bare-metal Debian hosts)."""
    own = Path("/boot") / f"vmlinuz-{os.uname().release}"
    candidates = [own] + sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)
    for path in candidates:
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def _resolve_kernel_package() -> str | None:
    proc = hostops.run(["apt-cache", "depends", KERNEL_METAPACKAGE],
                       timeout=30, check=False)
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Depends" and value.strip().startswith("linux-image-"):
            return value.strip()
    return None


def _only(paths, what: str) -> Path:
    found = sorted(paths)
    if not found:
        raise RuntimeError(f"{what} not found")
    return found[-1]


def _download_kernel(dest: Path) -> Path:
    """apt-get download the cloud kernel and keep only vmlinuz in `dest`."""
    package = _resolve_kernel_package()
    if package is None:
        raise RuntimeError(f"apt-cache cannot resolve {KERNEL_METAPACKAGE}")
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest))
    try:
        # apt-get download writes into its cwd; env -C sets it without
        # changing ours (we may be inside a threaded service).
        hostops.run(["env", "-C", str(scratch), "apt-get", "download",
                     package], timeout=300)
        deb = _only(scratch.glob("*.deb"), f"{package}.deb")
        tree = scratch / "tree"
        hostops.run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=300)
        vmlinuz = _only((tree / "boot").glob("vmlinuz-*"), "boot/vmlinuz-*")
        target = dest / vmlinuz.name
        shutil.move(str(vmlinuz), target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def find_probe_kernel(cache_dir: Path | None, work: Path) -> Path:
    """A bootable kernel: cached, the host's, or freshly downloaded.

    Raises RuntimeError (or a hostops error) when none can be had.
    """
    store = cache_dir / KERNEL_SUBDIR if cache_dir else work / KERNEL_SUBDIR
    cached = sorted(store.glob("vmlinuz-*")) if store.is_dir() else []
    if cached:
        return cached[-1]
    return _host_kernel() or _download_kernel(store)


# --- cache --------------------------------------------------------------------

def cache_key(qemu_version: str, host_release: str) -> str:
    return f"{qemu_version.strip()}|{host_release.strip()}"


def load_cached(cache_dir: Path | None, key: str) -> AccelResult | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads((cache_dir / CACHE_FILE).read_text())
        if data.get("key") != key:
            return None
        return AccelResult(**data["result"])
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing or corrupt: probe again


def store_cached(cache_dir: Path | None, key: str, result: AccelResult) -> None:
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"key": key, "result": asdict(result),
                       "probed_at": time.time()}, indent=1)
    # Unique temp name + rename: concurrent probes (doctor and the compute
    # driver) never see or write half a file.
    fd, tmp = tempfile.mkstemp(prefix=".accel-", dir=cache_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, cache_dir / CACHE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def qemu_version(qemu: str) -> str | None:
    try:
        proc = hostops.run([qemu, "--version"], timeout=15, check=False)
    except (OSError, hostops.CommandTimeout):
        return None
    lines = proc.stdout.decode(errors="replace").splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def _kvm_device_error() -> str | None:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"/dev/kvm unusable ({exc.strerror})"
    return None


# --- the probe ----------------------------------------------------------------

def probe_accelerator(*, cache_dir: Path | None,
                      qemu: str = "qemu-system-x86_64",
                      timeout: float = 20) -> AccelResult:
    version = qemu_version(qemu)
    if version is None:
        return AccelResult("tcg", False, f"{qemu} is not runnable", False)
    key = cache_key(version, os.uname().release)
    cached = load_cached(cache_dir, key)
    # A cached "kvm works" is void once /dev/kvm went away (module unloaded).
    if cached and not (cached.kvm_ok and _kvm_device_error()):
        return cached
    work = Path(tempfile.mkdtemp(prefix="sbx-accel-"))
    try:
        result, conclusive = _probe(qemu, work, cache_dir, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("accelerator probe: %s", result)
    if conclusive:
        store_cached(cache_dir, key, result)
    return result


def _probe(qemu: str, work: Path, cache_dir: Path | None,
           timeout: float) -> tuple[AccelResult, bool]:
    """Return (result, conclusive); only conclusive results are cached."""
    mbr = _boot_sector(qemu, "tcg", work, timeout)
    tcg_ok = BOOT_MARKER in mbr.output
    device_error = _kvm_device_error()
    if device_error:
        return AccelResult("tcg", False, device_error, tcg_ok), False
    try:
        kernel = find_probe_kernel(cache_dir, work)
    except (RuntimeError, OSError,
            hostops.CommandError, hostops.CommandTimeout) as exc:
        reason = f"no kernel to probe KVM with ({exc or type(exc).__name__})"
        return AccelResult("tcg", False, reason, tcg_ok), False
    kvm = _kernel(qemu, "kvm", kernel, work, timeout)
    if KERNEL_MARKER in kvm.output:
        reason = f"KVM booted a Linux kernel in {kvm.seconds:.1f} s"
        return AccelResult("kvm", True, reason, tcg_ok), True
    failure = describe_kvm_failure(kvm, timeout)
    # Control run: the same kernel under TCG tells a broken KVM apart from
    # a kernel that cannot boot at all (then the verdict is not cached).
    control = _kernel(qemu, "tcg", kernel, work, timeout)
    if KERNEL_MARKER in control.output:
        reason = (f"KVM unusable: {failure}; the same kernel boots under TCG "
                  f"in {control.seconds:.1f} s")
        return AccelResult("tcg", False, reason, True), True
    reason = f"KVM unusable: {failure}; probe kernel {kernel.name} does not " \
             "boot under TCG either (inconclusive)"
    return AccelResult("tcg", False, reason, tcg_ok), False
