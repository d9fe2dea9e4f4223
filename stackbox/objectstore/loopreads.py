"""Small object reads on the event loop, while the page cache serves them.

A GET of a small object is a few short system calls (list the object's
directory, open, one pread) that the page cache answers in tens of
microseconds. Sending them to a worker thread (anyio's hop, the interpreter
lock handed over and back) costs more than that. Measured with two
processes and 4 KiB objects at c=16: 2,800-3,100 GETs/s through a thread,
3,800-4,100/s on the loop, and p99 latency 20 -> 12 ms (docs/objectstore.md).

A read that has to go to the disk, though, would stall every request of
the process while it waits. So the loop reads inline only while its own
reads are served from memory: LoopReads compares the loop thread's count of
block reads (getrusage(RUSAGE_THREAD).ru_inblock, about half a microsecond)
before and after each inline read, and keeps the share of recent inline
reads that went to the disk (a moving average, each read weighing 1/16).
When a read goes to the disk while that share is over a tenth (two in a
row, or in a handful of reads), the reads of the next moment go to worker
threads, as before: 50 ms the first time, doubling while the reads that try
again still go to the disk, up to 2 s; so a cold or slow disk costs at most
two stalled reads per process every 2 s. A lone read from the disk now and
then (a page the kernel reclaimed: on the benchmark machine about 1 in 170
reads of objects just written) stays inline: when each one sent the next
50 ms of reads to threads, half of all small GETs took a thread.

Code run this way calls must_not_block() before anything that may wait
long on something other than the page cache (a database query, a remote
object server); on the loop that raises NeedsThread, before any side
effect, and the call is made again in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from typing import Callable, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")

MIN_COOLDOWN = 0.05     # seconds of thread reads after an inline read touched the disk,
MAX_COOLDOWN = 2.0      # doubled for each further one in a row
MISS_WEIGHT = 1 / 16    # of the latest inline read in the share that went to the disk
MISS_SHARE = 0.1        # above it, a read from the disk sends reads to threads


class NeedsThread(Exception):
    """Inline code reached a call that may block: run it in a thread."""


def must_not_block() -> None:
    """Raise NeedsThread when called on an event loop's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise NeedsThread


def _block_reads() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_inblock


def block_reads_counted() -> bool:
    """Whether the kernel counts a thread's block reads (task I/O
    accounting, the same counters as /proc/<pid>/io). Without them a read
    from the disk could not be noticed, and every read goes to a thread."""
    return os.path.exists("/proc/self/io")


class LoopReads:
    """Runs short reads on the event loop while they do not touch the disk
    (one per process; the state is the loop thread's)."""

    def __init__(self, enabled: bool | None = None, *, min_cooldown: float = MIN_COOLDOWN,
                 max_cooldown: float = MAX_COOLDOWN):
        self.enabled = block_reads_counted() if enabled is None else enabled
        self.min_cooldown, self.max_cooldown = min_cooldown, max_cooldown
        self.cooldown = min_cooldown        # the next one
        self.missed = 0.0                   # share of recent inline reads from the disk
        self._threads_until = 0.0
        self.inline = self.threaded = 0       # counts, for tests and benchmarks

    def allowed(self) -> bool:
        return self.enabled and time.monotonic() >= self._threads_until

    async def run(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) here when allowed, else in a worker thread. fn must
        call must_not_block() before its first blocking step other than a
        local file read."""
        if self.allowed():
            before = _block_reads()
            try:
                result = fn(*args)
                self.inline += 1
                return result
            except NeedsThread:
                pass
            finally:
                self._count(_block_reads() != before)
        self.threaded += 1
        return await run_in_threadpool(fn, *args)

    def _count(self, missed: bool) -> None:
        self.missed = self.missed * (1 - MISS_WEIGHT) + (MISS_WEIGHT if missed else 0.0)
        if not missed:
            if self.missed < MISS_SHARE / 2:
                self.cooldown = self.min_cooldown
        elif self.missed > MISS_SHARE:
            self._threads_until = time.monotonic() + self.cooldown
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
