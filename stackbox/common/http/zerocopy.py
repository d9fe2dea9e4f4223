"""Response bodies sent from a file with sendfile(2): ASGI's zero-copy send.

A big object's GET read each MiB into Python (a copy out of the page cache)
and handed it to the transport (a second copy, into the socket). With
sendfile the kernel moves the bytes from the page cache to the socket
itself, and the whole body costs one worker-thread hop instead of one per
MiB. The ASGI spec has an extension for it, `http.response.zerocopysend`
(https://asgi.readthedocs.io/en/latest/extensions.html); uvicorn does not
implement it, so `ZeroCopyProtocol` (uvicorn's httptools protocol) adds it:
each request's scope lists the extension, and its send() takes

    {"type": "http.response.zerocopysend", "file": <fd or file object>,
     "offset": <int>, "count": <int>, "more_body": <bool>}

after `http.response.start`, for a response with a Content-Length. The
status line and headers leave through the transport first; then a worker
thread sends `count` bytes from `offset` straight to the socket (waiting
for it to drain with poll(2), not on the event loop, whose transport is idle
meanwhile). A client that goes away ends the response quietly, as uvicorn's
own send does.

Measured (64 MiB GETs from the page cache, bench/objectstore): see
docs/objectstore.md. Apps check for the extension and fall back to
streaming chunks without it (h11, or another server).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select

import anyio
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("stackbox.http")

EXTENSION = "http.response.zerocopysend"
STALL_SECONDS = 60      # a client that takes no byte for this long is dropped
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


def supported(scope) -> bool:
    return EXTENSION in (scope.get("extensions") or ())


class ZeroCopyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the zero-copy send extension."""

    def _start_asgi_task(self, cycle, app) -> None:
        cycle.scope.setdefault("extensions", {})[EXTENSION] = {}
        plain = cycle.send

        async def send(message):
            if message["type"] == EXTENSION:
                await _send_file(cycle, plain, message)
            else:
                await plain(message)
        cycle.send = send
        super()._start_asgi_task(cycle, app)


async def _send_file(cycle, plain_send, message) -> None:
    if cycle.disconnected:
        return
    if (not cycle.response_started or cycle.response_complete or cycle.chunked_encoding
            or cycle.scope["method"] == "HEAD"):
        raise RuntimeError(f"{EXTENSION} needs a started response with a Content-Length")
    file = message["file"]
    fd = file if isinstance(file, int) else file.fileno()
    offset, count = message.get("offset", 0), message["count"]
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    transport = cycle.transport
    # What uvicorn wrote (status line, headers) leaves before the file's bytes.
    while transport.get_write_buffer_size() and not cycle.disconnected:
        await asyncio.sleep(0.001)
    if cycle.disconnected:
        return
    # The thread sends through its own descriptor of the socket: the event
    # loop closes the transport's when the client hangs up, and that number
    # may be another connection's by the time the thread writes again.
    try:
        sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    except (AttributeError, OSError):        # closed meanwhile
        cycle.disconnected = True
        return
    try:
        await anyio.to_thread.run_sync(_sendfile_all, sock_fd, fd, offset, count)
    except OSError as exc:
        if exc.errno not in _GONE:
            log.warning("sendfile of a response body stopped: %s", exc)
        cycle.disconnected = True
        transport.close()
        return
    finally:
        os.close(sock_fd)
    cycle.expected_content_length -= count
    if not message.get("more_body", False):
        await plain_send({"type": "http.response.body", "body": b"", "more_body": False})


def _sendfile_all(sock_fd: int, fd: int, offset: int, count: int) -> None:
    """Blocking (a worker thread): `count` bytes of `fd` from `offset` into
    the non-blocking socket, waiting with poll(2) while it is full."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while count:
        try:
            sent = os.sendfile(sock_fd, fd, offset, count)
        except BlockingIOError:
            ready = poller.poll(STALL_SECONDS * 1000)
            if not ready:
                raise OSError(errno.ETIMEDOUT, f"the client took nothing for {STALL_SECONDS} s")
            if ready[0][1] & (select.POLLERR | select.POLLHUP):
                raise OSError(errno.EPIPE, "the client went away") from None
            continue
        if sent == 0:
            raise OSError(errno.EIO, f"the file ended {count} bytes early")
        offset += sent
        count -= sent
