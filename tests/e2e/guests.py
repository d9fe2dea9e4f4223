"""Running QEMU guests from tests without leaving processes behind."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-system-x86_64")
BOOT_TIMEOUT = 60
MARK = "STACKBOX-TINY:"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: if pytest itself is killed, the kernel kills the child
    too, so no QEMU or daemon outlives the test run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def qemu_argv(image, serial_log: Path, extra: list[str]) -> list[str]:
    return [QEMU, "-accel", "tcg", "-m", "128", "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-serial", f"file:{serial_log}",
            "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
            "-append", image.cmdline, *extra]


class Guest:
    def __init__(self, argv: list[str], serial_log: Path, *,
                 limit: float = BOOT_TIMEOUT + 60):
        self.serial_log = serial_log
        # `timeout` is a second belt: QEMU dies after a hard limit even if
        # the finalizer never runs. New session: one killpg reaches both.
        self.proc = subprocess.Popen(
            ["timeout", "--signal=KILL", str(int(limit)), *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent)
        self.started = time.monotonic()

    def log(self) -> str:
        try:
            return self.serial_log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def wait_for(self, marker: str, timeout: float) -> float:
        """Seconds from spawn until `marker` is in the serial log."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if marker in self.log():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")
                pytest.fail(f"QEMU exited with {self.proc.returncode}: {out}\n"
                            f"serial log:\n{self.log()}")
            time.sleep(0.2)
        pytest.fail(f"no {marker!r} within {timeout} s; serial log:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
