"""StepRunner (stackbox.objectstore.steprunner): the waiting requests' step
generators run together in one thread, a round at a time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stackbox.objectstore.steprunner import StepRunner


def _job(name, log, rounds=3, *, gate=None, fail_at=None):
    def steps():
        for r in range(rounds):
            if gate is not None and r == 0:
                gate.wait(5)
            log.append((name, r, threading.current_thread().name))
            if r == fail_at:
                raise ValueError(f"{name} failed")
            if r < rounds - 1:
                yield
        return name.upper()
    return steps()


def test_waiting_jobs_go_together_round_by_round_and_keep_their_results():
    log: list = []
    gate = threading.Event()
    runner = StepRunner()

    async def main():
        first = asyncio.ensure_future(runner.run(_job("a", log, gate=gate)))
        await asyncio.sleep(0.05)       # "a" holds the runner: the rest queue up
        rest = [asyncio.ensure_future(runner.run(_job(n, log, fail_at=1 if n == "c" else None)))
                for n in ("b", "c", "d")]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*rest, return_exceptions=True)
    try:
        first, rest = asyncio.run(main())
    finally:
        runner.close()
    assert first == "A"
    assert rest[0] == "B" and rest[2] == "D"
    assert isinstance(rest[1], ValueError) and str(rest[1]) == "c failed"
    assert {t for _n, _r, t in log} == {"sbx-steps"}
    assert [(n, r) for n, r, _t in log] == [
        ("a", 0), ("a", 1), ("a", 2),                  # the first batch, alone
        ("b", 0), ("c", 0), ("d", 0),                  # then the three that waited
        ("b", 1), ("c", 1), ("d", 1),                  # "c" fails here, the rest go on
        ("b", 2), ("d", 2)]
    assert (runner.batches, runner.jobs) == (2, 4)


def test_a_cancelled_caller_waits_for_its_steps_to_end():
    log: list = []
    gate = threading.Event()
    runner = StepRunner()

    async def main():
        task = asyncio.ensure_future(runner.run(_job("a", log, gate=gate)))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()          # still waiting for the runner
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [(n, r) for n, r, _t in log] == [("a", 0), ("a", 1), ("a", 2)]
    try:
        asyncio.run(main())
    finally:
        runner.close()


def test_a_closed_runner_refuses_work():
    runner = StepRunner()
    runner.close()

    async def main():
        with pytest.raises(RuntimeError, match="closed"):
            await runner.run(_job("a", []))
    asyncio.run(main())
