"""Small PUTs and DELETEs of one process committed together, in batches.

Where io_uring works, uring.UringRunner runs the same steps on the event
loop instead (faster, see there); this runner is the fallback.

A small PUT's disk work is a handful of short system calls and two waits
for the disk: fdatasync of the file, fsync of its directory. Run in a
worker thread each, concurrent PUTs shared the journal's commits anyway (the
kernel batches flushes that arrive together), but every PUT paid its own
thread hop, and with eight at a time the threads fought over the
interpreter lock around every system call.

StepRunner instead runs the requests that are waiting as step generators
(a PUT's in ObjectStoreService.put_object_async, a DELETE's
ObjectBackend.delete_steps), a round at a time (storage.together). Its
first thread takes each new request's first step: open and write its files
and start their writeback. Its second thread takes every request started
meanwhile as one batch: fdatasync every file (the first flush commits the
journal transaction holding all of them, the rest find theirs done), rename
every file, fsync every directory (the same again), then writes the batch's
listing rows (ListingWriter.apply_here) and wakes the event loop once for
the whole batch. While the second thread waits for the disk, the first
prepares the next batch. The steps ask for their flushes (diskfile.Flush)
and the second thread makes them, one after the other (diskfile.run_steps).

Only work that is quick is given to it (bodies held in memory, local
devices, no versions or container quota); a step that blocked long would hold up
every request of the batch. The checks before (container, quota, ACL) run
on the event loop while caches answer them, else in a worker thread.

Measured with 4 KiB objects at c=16, two processes, connections spread
evenly (docs/objectstore.md): 1,125-1,192 PUTs/s through a thread each,
1,442-1,444/s through one runner thread; server CPU 1.23-1.30 -> 0.87-0.89
ms per PUT. The first thread for the first steps then added 5-11%
(1,213 / 1,378 / 1,450 -> 1,348 / 1,484 / 1,527 in interleaved pairs). Two
or four whole runner threads per process did no better than one
(1,261-1,440/s): they fight over the interpreter lock for the same steps.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import NamedTuple

import anyio

from stackbox.common.handoff import settle_threadsafe
from stackbox.objectstore.diskfile import run_steps
from stackbox.objectstore.storage import together

MAX_BATCH = 64


class Listed(NamedTuple):
    """What a job returns when its request also changes a listing row: the
    runner writes the rows of its whole batch (ListingWriter.apply_here) in
    its own thread once the batch is on disk, and the caller gets (value,
    the listing's result), or the listing's exception."""
    value: object
    change: object


class StepRunner:
    """Two threads that advance batches of step generators together: the
    first step of each new one, then the rest of all started ones."""

    def __init__(self, listings=None, *, name: str = "sbx-steps"):
        self._listings = listings
        self._name = name
        self._queue: deque = deque()        # jobs not started
        self._started: deque = deque()      # jobs past their first step
        # one lock, a condition per thread: a new job wakes only the first
        # thread, a started one only the second (a shared condition woke
        # both, and one of them just went back to sleep)
        lock = threading.Lock()
        self._new = threading.Condition(lock)
        self._ready = threading.Condition(lock)
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._starting_done = False         # the first thread has ended (closed)
        self.batches = self.jobs = 0      # counts, for tests and benchmarks

    async def run(self, steps):
        """The return value of the step generator `steps`, run to its end in
        the runner's threads with the other waiting ones; its exception
        (an Exception) is raised here."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._new:
            if self._closed:
                raise RuntimeError("the step runner is closed")
            if not self._threads:
                for target, suffix in ((self._start_loop, "-start"), (self._loop, "")):
                    t = threading.Thread(target=target, name=self._name + suffix, daemon=True)
                    t.start()
                    self._threads.append(t)
            self._queue.append((steps, fut, loop))
            self._new.notify()
        # Like a worker thread's call, the steps run to their end even when
        # the caller is cancelled meanwhile: whatever it does next (an
        # abort, say) must not race them.
        return await wait_to_the_end(fut)

    def close(self) -> None:
        with self._new:
            self._closed = True
            self._new.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _start_loop(self) -> None:
        """The first step of each new job (open and write its files), while
        the other thread waits for the disk on the batch before."""
        while True:
            with self._new:
                while not self._queue and not self._closed:
                    self._new.wait()
                if not self._queue:
                    self._starting_done = True
                    self._ready.notify()
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), MAX_BATCH))]
            started, done = [], []
            for job in batch:
                try:
                    asked = next(job[0])
                except StopIteration as end:
                    done.append((job, end.value))
                except BaseException as exc:     # noqa: BLE001 - handed to its waiter
                    done.append((job, exc))
                else:
                    started.append((_resume(job[0], asked), *job[1:]))
            if done:
                results = [r for _j, r in done]
                self._list(results)
                _hand_back([j for j, _r in done], results)
            if started:
                with self._ready:
                    self._started.extend(started)
                    self._ready.notify()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._started and not self._starting_done:
                    self._ready.wait()
                if not self._started:
                    return
                batch = [self._started.popleft()
                         for _ in range(min(len(self._started), MAX_BATCH))]
            self.batches += 1
            self.jobs += len(batch)
            try:
                results = run_steps(together([steps for steps, _f, _l in batch], (Exception,)))
            except BaseException as exc:     # noqa: BLE001 - handed to every waiter
                results = [exc] * len(batch)
            self._list(results)
            _hand_back(batch, results)

    def _list(self, results: list) -> None:
        """The listing rows of the jobs that returned Listed, in one batch."""
        listed = [i for i, r in enumerate(results) if isinstance(r, Listed)]
        if not listed:
            return
        if self._listings is None:
            raise RuntimeError("a job returned Listed to a runner without listings")
        outcomes = self._listings.apply_here([results[i].change for i in listed])
        for i, outcome in zip(listed, outcomes):
            results[i] = outcome if isinstance(outcome, BaseException) \
                else (results[i].value, outcome)


async def wait_to_the_end(fut: asyncio.Future):
    """fut's result. A caller cancelled meanwhile still waits for fut to end
    before its cancellation is raised."""
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError as exc:
        cancelled = exc
    while not fut.done():
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.shield(fut)
        except asyncio.CancelledError:
            pass
    raise cancelled


def _resume(steps, asked):
    """The rest of a started job, for `together`: first the flushes its
    first step asked for (diskfile.Flush), then its next steps."""
    try:
        while True:
            answers = yield asked
            try:
                asked = steps.send(answers)
            except StopIteration as done:
                return done.value
    finally:
        steps.close()


def _hand_back(batch: list, results: list) -> None:
    """Each job's result to its caller: one call per event loop."""
    settle_threadsafe((loop, fut, result)
                      for (_steps, fut, loop), result in zip(batch, results))
