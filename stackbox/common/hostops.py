"""The one way stackbox runs a host command: an argv list (never a shell
string), a timeout, the command logged, stderr carried in the error."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time

log = logging.getLogger("stackbox.hostops")


class CommandError(RuntimeError):
    def __init__(self, argv: list[str], returncode: int, stderr: bytes):
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        super().__init__(
            f"{shlex.join(argv)} exited with {returncode}: {' / '.join(tail) or 'no stderr'}")


class CommandTimeout(RuntimeError):
    def __init__(self, argv: list[str], timeout: float):
        self.argv = argv
        self.timeout = timeout
        super().__init__(f"{shlex.join(argv)} did not finish within {timeout:g} s")


def run(argv: list[str], *, timeout: float, check: bool = True,
        input: bytes | None = None, env: dict | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run argv, wait at most `timeout` seconds, return the CompletedProcess
    (stdout and stderr as bytes). The whole process group is killed on timeout
    so a command's children cannot outlive it."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("hostops.run takes an argv list, never a shell string")
    argv = [str(a) for a in argv]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
        start_new_session=True)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        log.warning("command timed out after %gs: %s", timeout, shlex.join(argv))
        raise CommandTimeout(argv, timeout) from None
    elapsed = (time.monotonic() - started) * 1000
    log.debug("ran %s -> %d in %.0f ms", shlex.join(argv), proc.returncode, elapsed)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, err)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def interface_names() -> list[str]:
    """Names of the network interfaces of this host (network namespace)."""
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []
