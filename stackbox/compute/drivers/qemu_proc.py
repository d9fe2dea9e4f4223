"""QEMU processes seen from the host: finding an instance's process from
its pidfile (trusting it only when /proc says it is that instance's QEMU),
killing it, reading QEMU's reason for failing, bounding the console log,
and the per-instance locks."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from stackbox.compute.drivers.base import DriverError
from stackbox.compute.drivers.qemu_argv import InstancePaths

_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()
_trim_guard = threading.Lock()


def instance_lock(instances_dir: Path, uuid: str) -> threading.RLock:
    """One lock per instance for the whole process, shared by every driver
    object over the same directory (a re-adopting driver included)."""
    key = f"{Path(instances_dir).resolve()}/{uuid}"
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _marker(paths: InstancePaths) -> bytes:
    return b"\0-uuid\0" + paths.dir.name.encode() + b"\0"


def find_pid(paths: InstancePaths) -> int | None:
    """The pid of this instance's QEMU, or None. A stale pidfile whose pid
    now belongs to another process (or a zombie) is not trusted."""
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _marker(paths) in cmdline(pid) else None


def wait_gone(pid: int, paths: InstancePaths, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _marker(paths) in cmdline(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def clear_runtime(paths: InstancePaths) -> None:
    """Remove what a stopped QEMU leaves (a killed one removes nothing)."""
    for f in paths.runtime_files():
        f.unlink(missing_ok=True)
    paths.running_flag.unlink(missing_ok=True)


def kill(pid: int, paths: InstancePaths, timeout: float) -> None:
    """SIGKILL the instance's QEMU. The signal goes through a pidfd opened
    before the identity check, so a pid reused meanwhile is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        clear_runtime(paths)
        return
    try:
        if _marker(paths) in cmdline(pid):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        os.close(pidfd)
    if not wait_gone(pid, paths, timeout):
        raise DriverError(f"QEMU pid {pid} survived SIGKILL for {timeout:g} s")
    clear_runtime(paths)


def qemu_error_line(stderr: str, binary: str = "qemu-system-x86_64") -> str:
    """The line of QEMU's stderr that says why it failed."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    prefix = os.path.basename(binary) + ":"
    errors = [ln for ln in lines if "warning:" not in ln.lower()]
    for ln in errors:
        if ln.startswith(prefix):
            return ln
    return (errors or lines or ["no error text"])[0]


def trim_log(path: Path, limit: int) -> bool:
    """Cut a log that grew past `limit` bytes down to its last half, in
    place. QEMU writes it O_APPEND, so its next write lands at the new end;
    bytes written during the copy may be lost, which is fine for a console."""
    with _trim_guard:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size <= limit:
            return False
        with open(path, "r+b") as f:
            f.seek(max(0, size - limit // 2))
            tail = f.read()
            newline = tail.find(b"\n")
            if 0 <= newline < len(tail) - 1:
                tail = tail[newline + 1:]
            f.seek(0)
            f.write(tail)
            f.truncate(len(tail))
        return True
