"""The agent's loop: a failing pass is retried with backoff, `wake` asks
for a pass at once, `stop` ends the loop. Passes are stubbed: no host."""

from __future__ import annotations

import asyncio
import time

from stackbox.network.agent import NetworkAgent, Report


def agent(tmp_path, passes, **kw) -> NetworkAgent:
    a = NetworkAgent(state_dir=tmp_path, desired=lambda: None, **kw)

    def once():
        passes.append(time.monotonic())
        if len(passes) <= 2:
            raise RuntimeError("host not ready")
        return Report(errors=["router x: still broken"]) if len(passes) == 3 else Report()
    a.reconcile_once = once
    return a


def test_failures_back_off_then_the_loop_keeps_its_interval(tmp_path):
    passes: list[float] = []
    a = agent(tmp_path, passes, interval=0.02, max_backoff=0.2)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        while len(passes) < 6:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
    asyncio.run(main())
    gaps = [b - a for a, b in zip(passes, passes[1:])]
    # after 1, 2, 3 failed passes: 0.04, 0.08, 0.16 s; then back to 0.02 s
    assert gaps[0] >= 0.04 and gaps[1] >= 0.08 and gaps[2] >= 0.16
    # back to the interval (one of two gaps may be stretched by a loaded machine)
    assert min(gaps[3], gaps[4]) < 0.15, gaps


def test_wake_runs_a_pass_now_and_stop_ends_the_loop(tmp_path):
    passes: list[float] = [0.0, 0.0, 0.0]      # past the failing passes
    a = agent(tmp_path, passes, interval=30)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        while len(passes) < 4:
            await asyncio.sleep(0.01)
        a.wake()
        deadline = time.monotonic() + 2
        while len(passes) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
    asyncio.run(main())
    assert len(passes) == 5
