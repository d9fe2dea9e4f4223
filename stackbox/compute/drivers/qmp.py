"""Short synchronous QMP sessions over an instance's unix socket.

Built on `qemu.qmp`'s QMPClient with a private event loop per session, so
it works from any worker thread (the agent's threads may or may not have a
loop of their own) and every step has a timeout: a hung QEMU makes the
call fail, never the agent hang.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from stackbox.compute.drivers.base import DriverError

log = logging.getLogger(__name__)

# qemu.qmp logs every message at DEBUG and connection trouble at WARNING;
# our callers turn failures into DriverErrors with context instead.
logging.getLogger("qemu.qmp").setLevel(logging.ERROR)


class QmpError(DriverError):
    """QMP was unreachable or a command failed (message names which)."""


class Monitor:
    """`with Monitor(path) as mon: mon.cmd("query-status")`"""

    def __init__(self, path: Path, *, timeout: float = 10.0, name: str = "stackbox"):
        self.path = Path(path)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)

    def _run(self, coro, timeout: float | None = None):
        return self._loop.run_until_complete(
            asyncio.wait_for(coro, timeout or self.timeout))

    def __enter__(self) -> Monitor:
        try:
            self._run(self._client.connect(str(self.path)))
        except (OSError, EOFError, QMPError, asyncio.TimeoutError) as exc:
            self._close_loop()
            raise QmpError(f"cannot reach QMP at {self.path}: "
                           f"{exc or type(exc).__name__}") from None
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._run(self._client.disconnect(), 5)
        except Exception:  # noqa: BLE001 - EOFError and friends after `quit`
            pass  # the session is over either way
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()

    def cmd(self, name: str, args: dict[str, Any] | None = None, *,
            timeout: float | None = None) -> Any:
        try:
            return self._run(self._client.execute(name, args or {}), timeout)
        except asyncio.TimeoutError:
            raise QmpError(f"QMP {name} got no answer within "
                           f"{timeout or self.timeout:g} s") from None
        except (OSError, EOFError, QMPError) as exc:
            raise QmpError(f"QMP {name} failed: {exc or type(exc).__name__}") from None

    def status(self) -> str:
        return self.cmd("query-status")["status"]

    def pass_fd(self, fd: int, fdname: str) -> None:
        """Hand an open file to QEMU under `fdname` (SCM_RIGHTS + getfd),
        so QEMU never opens our paths or runs a shell for migration."""
        try:
            self._client.send_fd_scm(fd)
        except (OSError, QMPError) as exc:
            raise QmpError(f"cannot pass a file descriptor over QMP: {exc}") from None
        self.cmd("getfd", {"fdname": fdname})
