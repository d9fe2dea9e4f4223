"""StepRunner (stackbox.objectstore.steprunner): the waiting requests' step
generators run together in one thread, a round at a time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stackbox.objectstore.steprunner import StepRunner


def _job(name, log, rounds=3, *, gate=None, gate_at=0, fail_at=None):
    def steps():
        for r in range(rounds):
            if gate is not None and r == gate_at:
                gate.wait(5)
            log.append((name, r, threading.current_thread().name))
            if r == fail_at:
                raise ValueError(f"{name} failed")
            if r < rounds - 1:
                yield
        return name.upper()
    return steps()


def test_waiting_jobs_go_together_round_by_round_and_keep_their_results():
    """A job's first step (open and write) runs in one thread, the rest (the
    flushes and renames) in the other, with every job that is waiting."""
    log: list = []
    gate = threading.Event()
    runner = StepRunner()

    async def main():
        first = asyncio.ensure_future(runner.run(_job("a", log, gate=gate, gate_at=1)))
        await asyncio.sleep(0.05)       # "a" holds the second thread: the rest queue up
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
    assert [(n, r, t) for n, r, t in log] == [
        ("a", 0, "sbx-steps-start"),
        ("b", 0, "sbx-steps-start"), ("c", 0, "sbx-steps-start"),   # started while "a"
        ("d", 0, "sbx-steps-start"),                                # waits for the disk
        ("a", 1, "sbx-steps"), ("a", 2, "sbx-steps"),               # the first batch, alone
        ("b", 1, "sbx-steps"), ("c", 1, "sbx-steps"),               # then the three that
        ("d", 1, "sbx-steps"),                                      # waited, together;
        ("b", 2, "sbx-steps"), ("d", 2, "sbx-steps")]               # "c" failed
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


def test_the_flushes_a_job_asks_for_are_made_in_the_runner_thread(tmp_path):
    """A job's first step runs in the first thread and asks for flushes
    (diskfile.Flush); the second thread makes them and sends each job its
    own answers: None, or the OSError of that flush."""
    import errno
    import os

    from stackbox.objectstore.diskfile import Flush
    good = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    bad = next(fd for fd in range(900, 1000) if not _is_open(fd))    # a high number: the
                                                    # event loop's own fds take low ones
    runner = StepRunner()

    def job(fd):
        answers = yield (Flush(fd, data_only=True),)
        return answers, threading.current_thread().name

    async def main():
        return await asyncio.gather(runner.run(job(good)), runner.run(job(bad)))
    try:
        (ok, ok_thread), (failed, _t) = asyncio.run(main())
    finally:
        runner.close()
        os.close(good)
    assert ok == [None] and ok_thread == "sbx-steps"
    assert isinstance(failed[0], OSError) and failed[0].errno == errno.EBADF


def _is_open(fd: int) -> bool:
    import os
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
