"""Small PUTs and DELETEs run on the event loop, their flushes through io_uring.

The step runner (steprunner.py) moved a small PUT's disk work off the event
loop into two threads, because an fdatasync blocks. With io_uring nothing on
the loop blocks: a PUT's steps (open and write the file, mkdir, rename; see
diskfile.Writer._install_steps) run on the loop, and the flushes they ask for
(diskfile.Flush) are submitted to the loop's ring and run by the kernel's own
workers. Their completions wake the loop through an eventfd. No Python
thread takes part, so no request waits for the interpreter lock or for a
thread's turn, and no batch waits for the one before it: the file system
joins flushes that arrive together into one journal commit by itself.

Measured: the disk path alone (two processes, 8 PUTs of 4 KiB at a time
each, XFS on a loop device): 1,439-1,601 PUTs/s per process through the
step runner, 1,709-1,828 through the ring; p50 4.8-5.3 -> 4.1-4.5 ms.
The whole server, S3 PUTs with 4 clients: 776-829 -> 859-1,011 PUTs/s; with
16, where client and server use both cores, about 4% more, at 0.88 instead
of 0.82 ms of server CPU per PUT (docs/objectstore.md).

The ring needs the `liburing` package and a kernel that allows io_uring (a
container's seccomp profile often does not); `step_runner()` probes both
once and falls back to the step runner's threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref

from stackbox.objectstore.steprunner import Listed, StepRunner, wait_to_the_end

try:
    import liburing
except ImportError:             # an optional speed-up: the threads do the same
    liburing = None

log = logging.getLogger(__name__)

ENTRIES = 256       # submission slots; a full ring is submitted and refilled


def usable() -> str | None:
    """None when io_uring works here, else why not."""
    if liburing is None:
        return "the liburing package is not installed"
    ring = liburing.Ring()
    try:
        liburing.io_uring_queue_init(2, ring)
    except OSError as exc:
        return f"io_uring_setup failed: {exc}"
    try:
        sqe = liburing.io_uring_get_sqe(ring)
        liburing.io_uring_prep_nop(sqe)
        liburing.io_uring_submit_and_wait(ring, 1)
        return None
    except OSError as exc:
        return f"io_uring_enter failed: {exc}"
    finally:
        liburing.io_uring_queue_exit(ring)


def step_runner(listings=None, *, io_uring: bool = True):
    """The runner for small PUTs and DELETEs: on the event loop with io_uring
    where it works (and io_uring is true), else the step runner's threads."""
    why = usable() if io_uring else "io_uring = false in [object_store]"
    if why is None:
        return UringRunner(listings)
    log.info("small writes flushed in threads: %s", why)
    return StepRunner(listings)


class Ring:
    """One io_uring for one event loop. Flushes asked for during a loop
    iteration are submitted together at its end (one system call); the
    completions are read when the ring's eventfd becomes readable."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # no strong reference to the loop: the runner closes the ring when
        # its loop is collected (weakref.finalize)
        self._loop = weakref.ref(loop)
        self._closed = False
        self._ring = liburing.Ring()
        liburing.io_uring_queue_init(ENTRIES, self._ring)
        self._efd = -1
        try:
            self._cqe = liburing.Cqe()
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            liburing.io_uring_register_eventfd(self._ring, self._efd)
            loop.add_reader(self._efd, self._reap)
        except BaseException:
            self._exit()
            raise
        self._waiting: dict[int, asyncio.Future] = {}
        self._unsubmitted: list[int] = []
        self._ids = 0

    async def flush(self, flushes) -> list:
        """Run the flushes (diskfile.Flush) at once; each one's None or
        OSError, in order."""
        futures = [self._queue(f) for f in flushes]
        return [await f for f in futures]

    def _queue(self, flush) -> asyncio.Future:
        sqe = liburing.io_uring_get_sqe(self._ring)
        if not sqe:                     # the ring is full: send what is in it
            self._submit()
            sqe = liburing.io_uring_get_sqe(self._ring)
        liburing.io_uring_prep_fsync(sqe, flush.fd,
                                     liburing.IORING_FSYNC_DATASYNC if flush.data_only else 0)
        self._ids += 1
        liburing.io_uring_sqe_set_data64(sqe, self._ids)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiting[self._ids] = fut
        if not self._unsubmitted:
            loop.call_soon(self._submit)
        self._unsubmitted.append(self._ids)
        return fut

    def _submit(self) -> None:
        if not self._unsubmitted:
            return
        ids, self._unsubmitted = self._unsubmitted, []
        try:
            liburing.io_uring_submit(self._ring)
        except OSError as exc:          # these flushes failed; their steps abort
            for i in ids:
                fut = self._waiting.pop(i, None)
                if fut is not None and not fut.done():
                    fut.set_result(exc)

    def _reap(self) -> None:
        try:
            os.read(self._efd, 8)
        except BlockingIOError:
            pass
        while True:
            try:
                liburing.io_uring_peek_cqe(self._ring, self._cqe)
            except BlockingIOError:
                return
            except OSError:
                pass        # the binding raises a failed flush's error: read below
            cqe = self._cqe[0]
            ident = cqe.user_data
            try:
                cqe.res                 # the binding raises OSError for res < 0
                outcome = None
            except OSError as exc:
                outcome = OSError(exc.errno, exc.strerror)
            liburing.io_uring_cqe_seen(self._ring, cqe)
            fut = self._waiting.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(outcome)

    def close(self) -> None:
        if self._closed:
            return
        loop = self._loop()
        if loop is not None and not loop.is_closed() and self._efd >= 0:
            loop.remove_reader(self._efd)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(OSError("the ring was closed"))
        self._waiting.clear()
        self._exit()

    def _exit(self) -> None:
        self._closed = True
        liburing.io_uring_queue_exit(self._ring)
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1


class UringRunner:
    """StepRunner's interface: `await run(steps)` is the return value of the
    step generator `steps`, run on the calling event loop with its flushes
    through that loop's ring. A job returning Listed gets its listing row
    written with those of the other jobs that ended in the same loop
    iteration, one transaction on the loop (ListingWriter.apply_here), and
    returns (value, the listing's result). The loop may wait there for
    another process's listing transaction (the flock that orders them),
    which holds a batch's rows too. Handing the rows to the listing
    thread instead (apply_async) cost a hop there and back per batch, and
    more than the ring saved: 1,158-1,169 PUTs/s against 1,214 in threads;
    on the loop, 1,211-1,380 against 1,144-1,241."""

    def __init__(self, listings=None):
        self._listings = listings
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._closed = False
        self.jobs = 0                   # count, for tests

    async def run(self, steps):
        if self._closed:
            raise RuntimeError("the step runner is closed")
        # Like a worker thread's call, the steps run to their end even when
        # the caller is cancelled meanwhile.
        return await wait_to_the_end(asyncio.ensure_future(self._drive(steps)))

    async def _drive(self, steps):
        here = self._here()
        self.jobs += 1
        answers = None
        try:
            while True:
                try:
                    asked = steps.send(answers)
                except StopIteration as done:
                    result = done.value
                    break
                answers = await here.ring.flush(asked) if asked else []
        finally:
            steps.close()
        if not isinstance(result, Listed):
            return result
        if self._listings is None:
            raise RuntimeError("a job returned Listed to a runner without listings")
        fut = asyncio.get_running_loop().create_future()
        if not here.rows:
            asyncio.get_running_loop().call_soon(self._write_rows, here)
        here.rows.append((result.change, fut))
        outcome = await fut
        if isinstance(outcome, BaseException):
            raise outcome
        return result.value, outcome

    def _write_rows(self, here: "_Loop") -> None:
        rows, here.rows = here.rows, []
        outcomes = self._listings.apply_here([change for change, _f in rows])
        for (_c, fut), outcome in zip(rows, outcomes):
            fut.set_result(outcome)

    def _here(self) -> "_Loop":
        loop = asyncio.get_running_loop()
        here = self._loops.get(loop)
        if here is None:
            here = self._loops[loop] = _Loop(Ring(loop))
            weakref.finalize(loop, here.ring.close)
        return here

    def close(self) -> None:
        self._closed = True
        for here in list(self._loops.values()):
            here.ring.close()
        self._loops.clear()


class _Loop:
    """A runner's state on one event loop: its ring, and the listing rows of
    the jobs that ended in this loop iteration."""

    def __init__(self, ring: Ring):
        self.ring = ring
        self.rows: list = []
