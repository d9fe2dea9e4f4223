"""Workers.watch: a worker that exits is started again; one that keeps dying
young waits longer each time instead of spinning."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from stackbox.objectstore import workers as w


class _Quitters(w.Workers):
    """Workers whose processes exit at once (a start-up failure)."""

    def __init__(self):
        super().__init__(settings=None, sock=None, count=2)
        self.spawned = 0

    def _spawn(self, index):
        self.spawned += 1
        self.started[index] = w.time.monotonic()
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def _watch_for(workers, seconds):
    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(workers.watch(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task
    asyncio.run(main())


def test_a_worker_that_dies_young_backs_off(monkeypatch):
    monkeypatch.setattr(w, "RESTART_DELAY", 0.05)
    ws = _Quitters()
    ws.start()
    _watch_for(ws, 2.0)
    ws.procs[1].wait()
    # without the back-off: a restart every 0.05 s, ~40; with it 0.1, 0.2, 0.4, 0.8 s...
    assert 3 <= ws.spawned <= 10, ws.spawned


def test_a_worker_that_lived_is_started_again_at_once(monkeypatch):
    # a young one would wait 2 x 0.3 s: longer than this test watches
    monkeypatch.setattr(w, "RESTART_DELAY", 0.3)
    ws = _Quitters()
    ws.start()
    ws.procs[1].wait()
    ws.started[1] -= 3600                   # it had served for an hour
    ws._spawn = lambda index: subprocess.Popen([sys.executable, "-c", "import time; "
                                                "time.sleep(30)"])
    _watch_for(ws, 0.45)
    try:
        assert ws.procs[1].poll() is None   # the replacement runs
    finally:
        ws.procs[1].kill()
