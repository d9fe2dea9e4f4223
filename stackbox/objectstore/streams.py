"""Response bodies read from disk without holding up the event loop.

A body that is a span of one local file (a big object, a range) is sent with
sendfile where the server offers it (FileSpanResponse; common/http/zerocopy.py).
Otherwise:

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
from starlette.responses import Response, StreamingResponse

from stackbox.common.http import zerocopy


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


class FileSpanResponse(Response):
    """A body of `count` bytes of the open file `fd` from `offset`: sent with
    sendfile where the server offers ASGI's zero-copy send (stackbox's
    uvicorn protocol, common/http/zerocopy.py), else streamed from `chunks`
    (the same bytes, a blocking iterator) with read_ahead. `close` runs in a
    worker thread at the end. The headers carry the Content-Length."""

    def __init__(self, span: tuple[int, int, int], chunks: Iterable[bytes], *,
                 close: Callable[[], None], status_code: int, headers: dict):
        super().__init__(status_code=status_code, headers=headers)
        self.span, self.chunks, self.close = span, chunks, close

    async def __call__(self, scope, receive, send):
        if not zerocopy.supported(scope):
            fallback = StreamingResponse(read_ahead(self.chunks, close=self.close),
                                         status_code=self.status_code)
            fallback.raw_headers = self.raw_headers
            return await fallback(scope, receive, send)
        fd, offset, count = self.span
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await send({"type": zerocopy.EXTENSION, "file": fd, "offset": offset,
                        "count": count, "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.close)


def body_response(span: tuple[int, int, int] | None, chunks: Iterable[bytes], *,
                  close: Callable[[], None], status_code: int, headers: dict) -> Response:
    """The response for a body read from an open object: a FileSpanResponse
    when the object gave a span of its file ((fd, offset, count), see
    diskfile.Reader.file_span), else `chunks` streamed with read_ahead."""
    if span is not None:
        return FileSpanResponse(span, chunks, close=close, status_code=status_code,
                                headers=headers)
    return StreamingResponse(read_ahead(chunks, close=close), status_code=status_code,
                             headers=headers)
