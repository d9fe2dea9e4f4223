"""Response bodies read from disk without holding up the event loop.

Starlette iterates a blocking iterator one worker-thread hop per chunk and
starts reading the next chunk only after the previous one was sent. Here the
next chunk is read (and hashed, for a full read's etag check) in a worker
thread while the event loop sends the current one, so disk and network work
at the same time; at most two chunks are held.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Iterable

import anyio


async def read_ahead(chunks: Iterable[bytes], *,
                     close: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
    """Yield `chunks` (a blocking iterator), one chunk read ahead in a worker
    thread. An exception from the iterator (a failed etag check after the
    last chunk) is raised here, so the server aborts the response. `close`
    runs in a worker thread at the end, also when the client goes away."""
    it = iter(chunks)

    def step() -> bytes | None:
        return next(it, None)

    ahead: asyncio.Future | None = None
    try:
        ahead = asyncio.ensure_future(anyio.to_thread.run_sync(step))
        while True:
            chunk = await ahead
            ahead = None
            if chunk is None:
                return
            ahead = asyncio.ensure_future(anyio.to_thread.run_sync(step))
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            if ahead is not None:
                # the iterator must not be closed while a thread is inside it
                await asyncio.gather(ahead, return_exceptions=True)
            if close is not None:
                await anyio.to_thread.run_sync(close)
