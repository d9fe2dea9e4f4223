"""UringRunner (stackbox.objectstore.uring): small writes' steps on the event
loop, their flushes through a real io_uring; and the fallback to threads."""

from __future__ import annotations

import asyncio
import errno
import os
import threading

import pytest

from stackbox.objectstore import diskfile, uring
from stackbox.objectstore.diskfile import DiskFileManager, Flush
from stackbox.objectstore.steprunner import StepRunner

needs_uring = pytest.mark.skipif(uring.usable() is not None,
                                 reason=f"io_uring: {uring.usable()}")


def _closed_fd() -> int:
    """An fd number nothing has open (a freshly closed low one would be
    taken again by the ring's own eventfd)."""
    for fd in range(900, 1000):
        try:
            os.fstat(fd)
        except OSError:
            return fd
    raise AssertionError("no free fd number in 900-999")


@pytest.fixture
def runner():
    r = uring.UringRunner()
    yield r
    r.close()


@needs_uring
def test_flushes_go_through_the_ring_and_each_gets_its_own_answer(runner, tmp_path):
    """A step's flushes are submitted at once; a good fd's answer is None, a
    closed fd's is the kernel's EBADF; the steps run on the loop's thread."""
    good = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(good, b"x" * 4096)
    bad = _closed_fd()
    threads = []

    def steps():
        threads.append(threading.current_thread())
        answers = yield (Flush(good, data_only=True), Flush(bad, data_only=False))
        threads.append(threading.current_thread())
        more = yield ()
        return answers, more
    try:
        answers, more = asyncio.run(runner.run(steps()))
    finally:
        os.close(good)
    assert answers[0] is None
    assert isinstance(answers[1], OSError) and answers[1].errno == errno.EBADF
    assert more == []
    assert threads == [threading.main_thread()] * 2
    assert runner.jobs == 1


@needs_uring
def test_a_writer_commits_through_the_ring_not_through_fdatasync(runner, tmp_path,
                                                               monkeypatch):
    """Writer._install_steps asks for its flushes; run by the ring, no
    fdatasync or fsync call is made in Python, and the object is stored."""
    mgr = DiskFileManager(str(tmp_path))
    (tmp_path / "d1" / "tmp").mkdir(parents=True)     # made (durably) on first use

    def no_flush_here(fd):
        raise AssertionError("flushed in Python, not through the ring")
    monkeypatch.setattr(diskfile.os, "fdatasync", no_flush_here)
    monkeypatch.setattr(diskfile.os, "fsync", no_flush_here)

    def steps():
        w = mgr.writer("d1", 7, "a", "c", "o")
        w.write(b"hello")
        return (yield from w.commit_steps({}, together=True))
    meta = asyncio.run(runner.run(steps()))
    with mgr.open("d1", 7, "a", "c", "o") as r:
        assert b"".join(r) == b"hello" and r.metadata["etag"] == meta["etag"]
    assert os.listdir(tmp_path / "d1" / "tmp") == []


@needs_uring
def test_a_flush_failing_in_the_ring_aborts_the_write_and_leaves_nothing(runner, tmp_path,
                                                                        monkeypatch):
    """The kernel's error for the file's fdatasync (its fd swapped for a
    closed one) is raised in the writer, which removes its temp file."""
    mgr = DiskFileManager(str(tmp_path))
    (tmp_path / "d1" / "tmp").mkdir(parents=True)     # made (durably) on first use
    closed = _closed_fd()
    real_queue = uring.Ring._queue

    def queue(self, flush):
        return real_queue(self, flush._replace(fd=closed) if flush.data_only else flush)
    monkeypatch.setattr(uring.Ring, "_queue", queue)

    def steps():
        w = mgr.writer("d1", 7, "a", "c", "o")
        w.write(b"hello")
        return (yield from w.commit_steps({}, together=True))
    with pytest.raises(OSError) as err:
        asyncio.run(runner.run(steps()))
    assert err.value.errno == errno.EBADF
    assert os.listdir(tmp_path / "d1" / "tmp") == []
    assert not any(f.endswith(".data") for _d, _s, fs in os.walk(tmp_path) for f in fs)


@needs_uring
def test_a_cancelled_caller_waits_for_its_steps_to_end(runner, tmp_path):
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    log = []

    def steps():
        log.append("asked")
        yield (Flush(fd, data_only=True),)
        log.append("flushed")
        return "done"

    async def main():
        task = asyncio.ensure_future(runner.run(steps()))
        while not log:
            await asyncio.sleep(0)
        assert log == ["asked"]         # the flush is queued, not yet answered
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["asked", "flushed"]
    try:
        asyncio.run(main())
    finally:
        os.close(fd)


def test_a_closed_runner_refuses_work():
    r = uring.UringRunner()
    r.close()

    def steps():
        yield ()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(r.run(steps()))


def test_without_liburing_the_threads_run_the_steps(monkeypatch):
    monkeypatch.setattr(uring, "liburing", None)
    assert uring.usable() == "the liburing package is not installed"
    r = uring.step_runner()
    try:
        assert type(r) is StepRunner
    finally:
        r.close()


def test_a_kernel_refusing_io_uring_falls_back_to_threads(monkeypatch):
    """As under a container's seccomp profile: io_uring_setup fails."""
    if uring.liburing is None:
        pytest.skip("liburing is not installed")

    def refused(*_a, **_k):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(uring.liburing, "io_uring_queue_init", refused)
    assert uring.usable().startswith("io_uring_setup failed")
    assert type(uring.step_runner()) is StepRunner
