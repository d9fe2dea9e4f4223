"""Small PUTs and DELETEs of one process committed together, in one thread.

A small PUT's disk work is a handful of short system calls and two waits
for the disk: fdatasync of the file, fsync of its directory. Run in a
worker thread each, concurrent PUTs shared the journal's commits anyway (the
kernel batches flushes that arrive together), but every PUT paid its own
thread hop, and with eight at a time the threads fought over the
interpreter lock around every system call.

StepRunner instead runs the requests that are waiting, as step generators
(ObjectStoreService._put_steps / _delete_steps), in one thread, a round at a
time: open and write every file and start its writeback; fdatasync every
file (the first flush commits the journal transaction holding all of them,
the rest find theirs done); rename every file; fsync every directory (the
same again). Requests that arrive meanwhile go in the next batch. Then the
event loop is woken once for the whole batch.

Only work that is quick is given to it (bodies held in memory, local
devices); a step that blocked long would hold up every request of the batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from stackbox.objectstore.storage import _together

MAX_BATCH = 64


class StepRunner:
    """One thread that advances batches of step generators together."""

    def __init__(self, name: str = "sbx-steps"):
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
        return await fut

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
                results = list(_together_run([steps for steps, _f, _l in batch]))
            except BaseException as exc:     # noqa: BLE001 - handed to every waiter
                results = [exc] * len(batch)
            by_loop: dict = {}
            for (_steps, fut, loop), result in zip(batch, results):
                by_loop.setdefault(loop, []).append((fut, result))
            for loop, done in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, done)
                except RuntimeError:
                    pass        # that loop is closed: nobody is waiting


def _together_run(steps: list) -> list:
    gen = _together(steps, (Exception,))
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def _deliver(done: list) -> None:
    for fut, result in done:
        if fut.cancelled():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
