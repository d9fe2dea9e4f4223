"""The object server: one host's devices behind the internal HTTP API that the
proxy side (storage.ObjectBackend) speaks to every device whose ring entry
names another host ("HOST:PORT"), Swift's proxy <-> object-server boundary.

    PUT    /<device>/<partition>/<account>/<container>/<object>   upload
    GET    same path      [X-Backend-Range: start-end, end exclusive]
    HEAD   same path      X-Backend-Timestamp of the newest file (data or tombstone)
    DELETE same path      X-Backend-Timestamp: the tombstone's time

Each path segment is percent-encoded. Every request carries X-Backend-Token,
derived from the ring's hash prefix and suffix (the cluster secret every host
holding the ring has); anything else is 403. The public API strips every
X-Backend-* header at the edge, so a client can never send one through.

Bodies are framed so that what is known only at the end travels at the end:

    PUT body:  (u32 length, bytes)* data frames, a 0-length frame, then a JSON
               document {"metadata": {...}, "timestamp": "..."}; a body that ends
               before it is an aborted upload (nothing is kept)
    GET body:  u32 length, the metadata JSON, then the data bytes of the range;
               a connection closed before the last byte means the replica failed
               its etag check on the way and was quarantined

Errors are JSON {"error": class, "message", "field"}: 400, 403, 404 (a
tombstone's timestamp in X-Backend-Timestamp), 409 (an equal or newer version:
"timestamp" and "existing"), 507 (device missing or full).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool as call
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stackbox.common.errors import BadRequest, NotFound, ServiceUnavailable, StackboxError
from stackbox.objectstore.diskfile import DiskFileManager, normalize_timestamp
from stackbox.objectstore.errors import OlderTimestamp
from stackbox.objectstore.ring import Ring

FRAME = struct.Struct("!I")
MAX_FRAME = 16 * 1024 * 1024
MAX_TRAILER = 256 * 1024


def backend_token(ring: Ring) -> str:
    """The shared secret of the object servers of one ring."""
    raw = f"stackbox-object-server\0{ring.hash_prefix}\0{ring.hash_suffix}".encode()
    return hashlib.sha256(raw).hexdigest()


class Frames:
    """Incremental parser of a PUT body: feed() returns the data it completes;
    `done` once the 0-length frame is in, then `trailer` holds the rest."""

    def __init__(self):
        self._buf = bytearray()
        self.done = False
        self.trailer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.done:
            self.trailer += chunk
            if len(self.trailer) > MAX_TRAILER:
                raise BadRequest("upload metadata is too large", field="metadata")
            return []
        self._buf += chunk
        out, pos = [], 0
        while len(self._buf) - pos >= FRAME.size:
            (n,) = FRAME.unpack_from(self._buf, pos)
            if n == 0:
                self.done = True
                self.trailer = bytes(self._buf[pos + FRAME.size:])
                pos = len(self._buf)
                break
            if n > MAX_FRAME:
                raise BadRequest(f"frame of {n} bytes exceeds {MAX_FRAME}", field="body")
            if len(self._buf) - pos - FRAME.size < n:
                break
            out.append(bytes(self._buf[pos + FRAME.size:pos + FRAME.size + n]))
            pos += FRAME.size + n
        del self._buf[:pos]
        return out


def _error(exc: BaseException) -> JSONResponse:
    if isinstance(exc, OlderTimestamp):
        status = 409
    elif isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, (ServiceUnavailable, OSError)):
        status = 507
    elif isinstance(exc, BadRequest):
        status = 400
    else:
        status = 500
    body = {"error": type(exc).__name__,
            "message": (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc),
            "field": getattr(exc, "field", None)}
    if isinstance(exc, OlderTimestamp):
        body.update(timestamp=exc.timestamp, existing=exc.existing)
    return JSONResponse(body, status_code=status)


def build_app(manager: DiskFileManager, token: str) -> Starlette:
    async def endpoint(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get("x-backend-token", ""), token):
            return JSONResponse({"error": "Forbidden", "message": "bad or missing "
                                 "X-Backend-Token", "field": None}, status_code=403)
        try:
            loc = _location(request.scope.get("raw_path") or request.url.path.encode())
            handler = HANDLERS.get(request.method)
            if handler is None:
                return JSONResponse({"error": "MethodNotAllowed", "message": request.method,
                                     "field": None}, status_code=405)
            return await handler(manager, request, loc)
        except (StackboxError, OSError) as exc:
            return _error(exc)

    return Starlette(routes=[Route("/{path:path}", endpoint,
                                   methods=["GET", "HEAD", "PUT", "DELETE"])])


def _location(raw_path: bytes) -> tuple:
    parts = raw_path.decode("ascii", "replace").lstrip("/").split("/")
    if len(parts) != 5 or not all(parts):
        raise BadRequest("path must be /<device>/<partition>/<account>/<container>/<object> "
                         "with each part percent-encoded", field="path")
    device, part, account, container, obj = (unquote(p) for p in parts)
    try:
        partition = int(part)
    except ValueError:
        raise BadRequest(f"partition {part!r} is not an integer", field="partition") from None
    return device, partition, account, container, obj


async def put(manager: DiskFileManager, request: Request, loc: tuple) -> Response:
    # Opening the writer first checks the device (507 before any data moves).
    writer = await call(manager.writer, *loc, hashing=False)
    try:
        frames = Frames()
        async for chunk in request.stream():
            data = frames.feed(chunk)
            if data:
                await call(writer.write, b"".join(data) if len(data) > 1 else data[0])
        if not frames.done:
            raise BadRequest("the upload ended before its metadata", field="body")
        try:
            doc = json.loads(frames.trailer)
            metadata, timestamp = doc["metadata"], doc["timestamp"]
        except (ValueError, KeyError, TypeError):
            raise BadRequest("the upload's metadata is not a JSON document with metadata "
                             "and timestamp", field="metadata") from None
        meta = await call(writer.commit, metadata, timestamp=timestamp)
    except ClientDisconnect:
        writer.abort()
        return Response(status_code=499)
    except BaseException:
        writer.abort()
        raise
    return JSONResponse(meta, status_code=201)


async def get(manager: DiskFileManager, request: Request, loc: tuple) -> Response:
    reader = await call(manager.open, *loc)
    try:
        start, end = 0, reader.size
        spec = request.headers.get("x-backend-range")
        if spec:
            try:
                a, _, b = spec.partition("-")
                start, end = int(a), int(b) if b else reader.size
            except ValueError:
                raise BadRequest(f"X-Backend-Range {spec!r} is not start-end",
                                 field="range") from None
        chunks = reader.read_range(start, end)
    except BaseException:
        reader.close()
        raise
    meta = json.dumps(reader.metadata, sort_keys=True, separators=(",", ":")).encode()

    def body():
        try:
            yield FRAME.pack(len(meta)) + meta
            yield from chunks
        finally:
            reader.close()
    # No Content-Length: a replica found corrupt after its last chunk ends the
    # response without the chunked terminator, which the proxy sees.
    return StreamingResponse(body(), media_type="application/octet-stream")


async def head(manager: DiskFileManager, request: Request, loc: tuple) -> Response:
    ts, deleted = await call(manager.newest, *loc)
    headers = {"X-Backend-Timestamp": ts} if ts else {}
    return Response(status_code=404 if deleted or not ts else 200, headers=headers)


async def delete(manager: DiskFileManager, request: Request, loc: tuple) -> Response:
    ts = request.headers.get("x-backend-timestamp")
    if not ts:
        raise BadRequest("X-Backend-Timestamp is required", field="timestamp")
    existed = await call(manager.delete, *loc, normalize_timestamp(ts))
    return Response(status_code=204 if existed else 404)


HANDLERS = {"PUT": put, "GET": get, "HEAD": head, "DELETE": delete}
