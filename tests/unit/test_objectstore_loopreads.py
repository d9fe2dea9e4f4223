"""LoopReads: short reads on the event loop while the page cache serves them,
in a worker thread after one went to the disk or when the code would block."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from stackbox.common.errors import NotFound
from stackbox.objectstore.loopreads import LoopReads, NeedsThread, must_not_block


def run(coro):
    return asyncio.run(coro)


def where() -> int:
    return threading.get_ident()


def loop_and_result(reads: LoopReads, fn) -> tuple[int, object]:
    """(the loop's thread, what reads.run(fn) returned)."""
    async def main():
        return threading.get_ident(), await reads.run(fn)
    return run(main())


def test_a_cached_read_runs_on_the_loop():
    reads = LoopReads(True)
    loop_thread, ran_in = loop_and_result(reads, where)
    assert ran_in == loop_thread
    assert (reads.inline, reads.threaded) == (1, 0)


def test_code_that_would_block_runs_again_in_a_worker_thread():
    reads = LoopReads(True)
    calls = []

    def query():
        calls.append(where())
        must_not_block()
        return "rows"
    loop_thread, result = loop_and_result(reads, query)
    assert result == "rows"
    assert calls[0] == loop_thread and calls[1] != loop_thread and len(calls) == 2
    assert (reads.inline, reads.threaded) == (0, 1)


def test_must_not_block_is_silent_off_the_loop():
    must_not_block()
    with pytest.raises(NeedsThread):
        async def main():
            must_not_block()
        run(main())


def test_errors_from_an_inline_read_reach_the_caller():
    reads = LoopReads(True)

    def missing():
        raise NotFound("object o not found", field="object")
    with pytest.raises(NotFound):
        run(reads.run(missing))
    assert reads.allowed()


def test_disabled_reads_always_run_in_a_thread():
    reads = LoopReads(False)
    loop_thread, ran_in = loop_and_result(reads, where)
    assert ran_in != loop_thread and reads.threaded == 1


def _evict(path: str) -> None:
    """(Re)write a file on a real disk and drop its pages from the page cache."""
    with open(path, "wb") as f:
        f.write(os.urandom(64 * 1024))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, 64 * 1024, 0)
    finally:
        os.close(fd)


def _fs_type(path) -> str:
    """The file system type of the mount holding path (/proc/self/mounts)."""
    best, kind = "", ""
    for line in open("/proc/self/mounts"):
        _dev, mount, fstype = line.split()[:3]
        if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


def test_reads_from_the_disk_send_reads_to_threads_for_a_growing_while(tmp_path):
    if not LoopReads().enabled or _fs_type(tmp_path) in ("tmpfs", "ramfs", "overlay"):
        pytest.skip("no per-thread I/O accounting, or the tmp dir is not on a block device")
    path = str(tmp_path / "cold")
    reads = LoopReads(True, min_cooldown=0.3, max_cooldown=1.0)

    async def main():
        loop_thread = threading.get_ident()
        _evict(path)
        assert len(await reads.run(_read, path)) == 64 * 1024   # from the disk, inline
        assert reads.allowed(), "a lone read from the disk keeps reads on the loop"
        _evict(path)
        await reads.run(_read, path)                             # a second one: threads
        assert not reads.allowed()
        assert await reads.run(where) != loop_thread             # cooling down: a thread
        await asyncio.sleep(0.35)
        _evict(path)
        await reads.run(_read, path)                             # the disk again: longer
        assert reads._threads_until - time.monotonic() > 0.45    # 0.6 s this time
        assert reads.cooldown == 1.0                             # and 1.2 next, capped
        await asyncio.sleep(0.65)
        assert await reads.run(where) == loop_thread             # cached: inline again
        assert reads.cooldown == 1.0, "until the share from the disk is small again"
        for _ in range(20):
            await reads.run(where)
        assert reads.cooldown == 0.3 and reads.allowed()
    run(main())
    assert (reads.inline, reads.threaded) == (24, 1)


def test_reads_from_the_disk_now_and_then_stay_on_the_loop():
    """One read in 170 from the disk (pages the kernel reclaimed) costs that
    read's wait, not a thread hop for every read of the next 50 ms."""
    reads = LoopReads(True)
    for i in range(1700):
        reads._count(i % 170 == 0)
        assert reads.allowed()
    for _ in range(2):              # a cold disk: two in a row
        reads._count(True)
    assert not reads.allowed()
