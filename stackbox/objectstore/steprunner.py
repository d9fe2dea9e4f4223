"""Small PUTs and DELETEs of one process committed together, in one thread.

A small PUT's disk work is a handful of short system calls and two waits
for the disk: fdatasync of the file, fsync of its directory. Run in a
worker thread each, concurrent PUTs shared the journal's commits anyway (the
kernel batches flushes that arrive together), but every PUT paid its own
thread hop, and with eight at a time the threads fought over the
interpreter lock around every system call.

StepRunner instead runs the requests that are waiting, as step generators
(a PUT's in ObjectStoreService.put_object_async, a DELETE's
ObjectBackend.delete_steps), in one thread, a round at a time
(storage.together): open and write every file and start its writeback; fdatasync every
file (the first flush commits the journal transaction holding all of them,
the rest find theirs done); rename every file; fsync every directory (the
same again). Requests that arrive meanwhile go in the next batch. Then the
event loop is woken once for the whole batch.

Only work that is quick is given to it (bodies held in memory, local
devices, no versioned container); a step that blocked long would hold up
every request of the batch. The checks before (container, quota, ACL) run
on the event loop while caches answer them, else in a worker thread.

Measured with 4 KiB objects at c=16, two processes, connections spread
evenly (docs/objectstore.md): 1,125-1,192 PUTs/s through a thread each,
1,442-1,444/s through the runner; server CPU 1.23-1.30 -> 0.87-0.89 ms per
PUT. Two or four runner threads per process did no better (1,261-1,440/s):
they fight over the interpreter lock.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import NamedTuple

import anyio

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
    """One thread that advances batches of step generators together."""

    def __init__(self, listings=None, *, name: str = "sbx-steps"):
        self._listings = listings
        self._name = name
        self._queue: deque = deque()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = self.jobs = 0      # counts, for tests and benchmarks

    async def run(self, steps):
        """The return value of the step generator `steps`, run to its end in
        the runner's thread with the other waiting ones; its exception
        (an Exception) is raised here."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the step runner is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name,
                                                daemon=True)
                self._thread.start()
            self._queue.append((steps, fut, loop))
            self._wake.notify()
        # Like a worker thread's call, the steps run to their end even when
        # the caller is cancelled meanwhile: whatever it does next (an
        # abort, say) must not race them.
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

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), MAX_BATCH))]
            self.batches += 1
            self.jobs += len(batch)
            try:
                results = run_steps(together([steps for steps, _f, _l in batch], (Exception,)))
            except BaseException as exc:     # noqa: BLE001 - handed to every waiter
                results = [exc] * len(batch)
            self._list(results)
            by_loop: dict = {}
            for (_steps, fut, loop), result in zip(batch, results):
                by_loop.setdefault(loop, []).append((fut, result))
            for loop, done in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, done)
                except RuntimeError:
                    pass        # that loop is closed: nobody is waiting


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


def _deliver(done: list) -> None:
    for fut, result in done:
        if fut.cancelled():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
