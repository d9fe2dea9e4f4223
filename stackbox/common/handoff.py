"""Results from a worker thread to the event loops awaiting them.

A thread that finishes work for several requests at once (the listing
writer, the object store's step runner) settles their futures with one
call_soon_threadsafe per event loop, not one per request: each call wakes
the loop through its self-pipe.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable


def settle_threadsafe(outcomes: Iterable[tuple[asyncio.AbstractEventLoop, asyncio.Future,
                                                Any]]) -> None:
    """Set each (loop, future, outcome): an exception outcome is raised in
    the awaiting task, anything else is its result. Futures cancelled
    meanwhile and loops already closed (nobody waits) are skipped."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for loop, future, outcome in outcomes:
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:
            pass                    # the loop has closed: nobody is waiting


def _settle(settled: list[tuple[asyncio.Future, Any]]) -> None:
    """On the futures' loop."""
    for future, outcome in settled:
        if future.done():           # the request was cancelled meanwhile
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
