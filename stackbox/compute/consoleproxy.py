"""The console proxy: noVNC's web client and websockets to VNC and serial consoles.

One ASGI app on its own port (`[compute] console_port`, 6080):

    GET /vnc_lite.html, /vnc.html, /app/..., /core/...   noVNC, from Debian's package
    ws  /?token=T  (also /websockify?token=T)            the console T was issued for
    ws  /serial?token=T                                  a serial console only

A websocket request is checked before the upgrade, so a refused client gets
an HTTP status and a one-line reason instead of a websocket that opens and
dies: unknown path 404, foreign Origin / bad token 403, no 'binary'
subprotocol 400, console unreachable 502, too many consoles 503. After the
upgrade bytes are pumped both ways in binary frames (websockify's 'binary'
protocol, which noVNC and Nova's serial clients speak); text frames from a
serial client are sent on as UTF-8. Either side closing closes the other.

The token decides which console opens; `resolve` consumes it (see
consoletokens.py) and must never accept a token twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import sys
import time
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from stackbox.compute.consoletokens import ConsoleTokenError, TokenRecord
from stackbox.compute.drivers.base import ConsoleEndpoint, DriverError

log = logging.getLogger("stackbox.console")

# websocket path -> the console kind it insists on (None: whatever the token says).
WS_PATHS: dict[str, str | None] = {"/": None, "/websockify": None, "/serial": "serial"}
CHUNK = 64 * 1024            # one read from the console, one frame to the client
CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 256
NOVNC_CANDIDATES = (Path(sys.prefix) / "share" / "novnc", Path("/usr/share/novnc"))

Resolve = Callable[[str], Awaitable[ConsoleEndpoint | TokenRecord | None]]


def find_novnc(configured: str = "") -> Path | None:
    """noVNC's web root: the configured one, else the venv's (`make novnc`),
    else Debian's package."""
    candidates = (Path(configured),) if configured else NOVNC_CANDIDATES
    for path in candidates:
        if (path / "vnc_lite.html").is_file():
            return path
    return None


def console_base_url(settings) -> str:
    """http(s)://<public host>:<console_port> of this cloud's console proxy."""
    return settings.url_for_port(settings.compute.console_port)


def console_url(base_url: str, kind: str, token: str) -> str:
    """The URL the compute API returns. VNC: Nova's noVNC shape (noVNC reads
    `path` and opens ws://<same host:port>/?token=...). Serial: a websocket URL."""
    base = base_url.rstrip("/")
    if kind == "vnc":
        return f"{base}/vnc_lite.html?path=%3Ftoken%3D{token}"
    if kind == "serial":
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/serial?token={token}"
    raise ValueError(f"console kind {kind!r} not supported (allowed: vnc, serial)")


# Set in the connection's task when we answered with an HTTP refusal, so the
# log filter below can tell uvicorn's "returned without completing handshake"
# (which its websockets-sansio protocol says after any denial response) from a real fault.
_denied: contextvars.ContextVar[bool] = contextvars.ContextVar("console_denied", default=False)
_TOKEN_IN_TEXT = re.compile(r"(token(?:=|%3D))[A-Za-z0-9_\-]+")


class _ServerLogFilter(logging.Filter):
    """uvicorn logs each websocket's path with its query string: keep console
    tokens out of the log, and drop the false alarm after a refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        if record.msg.startswith("ASGI callable returned without") and _denied.get():
            return False
        message = record.getMessage()
        if "token" in message:
            record.msg, record.args = _TOKEN_IN_TEXT.sub(r"\1<redacted>", message), ()
        return True


def _install_log_filter() -> None:
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ServerLogFilter) for f in server_log.filters):
        server_log.addFilter(_ServerLogFilter())


class _Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ConsoleProxy:
    """The ASGI app. `resolve(token)` returns the endpoint to connect to (or a
    TokenRecord carrying it), None for an unknown token, or raises
    ConsoleTokenError with the reason to show."""

    def __init__(self, resolve: Resolve, *, novnc_dir: Path | None,
                 allowed_origins: tuple[str, ...] = (),
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 connect_timeout: float = CONNECT_TIMEOUT):
        self.resolve = resolve
        self.novnc_dir = novnc_dir
        self.static = StaticFiles(directory=novnc_dir) if novnc_dir else None
        self.allowed_origins = {o.lower() for o in allowed_origins}
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.open_connections = 0
        _install_log_filter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))
        elif scope["type"] == "http":
            await self._http(scope, receive, _with_page_headers(send))
        # lifespan: nothing to start or stop

    # --- HTTP: the noVNC client ---------------------------------------------------

    async def _http(self, scope, receive, send) -> None:
        if scope["path"] == "/":
            response = PlainTextResponse(
                "stackbox console proxy: open the URL from `openstack console url show`\n")
        elif self.static is None:
            response = PlainTextResponse(
                "noVNC is not installed on this host; fix: run `make novnc` (or apt-get "
                "install novnc) and restart stackbox\n", status_code=503)
        else:
            try:
                await self.static(scope, receive, send)
            except HTTPException as e:  # 404/405 (no Starlette app around to render them)
                await PlainTextResponse(f"{e.detail}\n", status_code=e.status_code,
                                        headers=e.headers)(scope, receive, send)
            return
        await response(scope, receive, send)

    # --- websocket: the consoles --------------------------------------------------

    async def _websocket(self, ws: WebSocket) -> None:
        # The slot is taken before the token is looked at, so concurrent
        # connects cannot overshoot the limit and a full proxy burns no token.
        self.open_connections += 1
        try:
            await self._session(ws)
        finally:
            self.open_connections -= 1

    async def _session(self, ws: WebSocket) -> None:
        peer = "%s:%s" % tuple(ws.client) if ws.client else "?"
        try:
            if self.open_connections > self.max_connections:
                raise _Refused(503, f"too many open consoles ({self.max_connections}); "
                                    "try again later")
            subprotocol = self._check_request(ws)
            record, endpoint = await self._claim(ws)
            reader, writer = await self._connect(endpoint)
        except _Refused as refused:
            log.info("console refused client=%s path=%s status=%d: %s",
                     peer, ws.url.path, refused.status, refused.reason)
            await _deny(ws, refused.status, refused.reason)
            return
        instance = record.instance_uuid if record else _where(endpoint)
        started = time.monotonic()
        counts = [0, 0]
        why = "?"
        try:
            await ws.accept(subprotocol=subprotocol)
            log.info("console open instance=%s kind=%s client=%s",
                     instance, endpoint.kind, peer)
            why = await _pump(ws, reader, writer, endpoint.kind, counts)
        finally:
            writer.close()
            log.info("console closed instance=%s kind=%s client=%s after %.1f s "
                     "(%d bytes in, %d out): %s", instance, endpoint.kind, peer,
                     time.monotonic() - started, counts[0], counts[1], why)

    def _check_request(self, ws: WebSocket) -> str | None:
        """Everything that needs no token, so a malformed request does not burn
        one. Returns the subprotocol to accept."""
        path = ws.url.path
        if path not in WS_PATHS:
            raise _Refused(404, f"no console at {path} (websocket paths: "
                                f"{', '.join(sorted(WS_PATHS))})")
        origin = ws.headers.get("origin")
        if origin and not self._origin_ok(origin, ws.headers.get("host", "")):
            raise _Refused(403, f"Origin {origin} is not this console proxy's host")
        offered = ws.scope.get("subprotocols") or []
        if offered and "binary" not in offered:
            raise _Refused(400, f"subprotocol: offered {', '.join(offered)}; this proxy "
                                "speaks 'binary' only")
        return "binary" if "binary" in offered else None

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin_host = (urlsplit(origin).hostname or "").lower()
        own_host = (urlsplit(f"//{host}").hostname or "").lower()
        return origin_host == own_host or origin_host in self.allowed_origins

    async def _claim(self, ws: WebSocket) -> tuple[TokenRecord | None, ConsoleEndpoint]:
        token = _token_of(ws)
        try:
            got = await self.resolve(token)
        except ConsoleTokenError as e:
            raise _Refused(403, e.reason)
        except DriverError as e:
            raise _Refused(502, f"console not available: {e.message}")
        except Exception:
            # e.g. the token database is unreachable: the client may retry
            log.exception("console token lookup failed")
            raise _Refused(503, "console tokens cannot be checked right now; try again")
        if got is None:
            raise _Refused(403, "console token unknown: ask for a new console URL")
        record = got if isinstance(got, TokenRecord) else None
        endpoint = got.endpoint if isinstance(got, TokenRecord) else got
        want = WS_PATHS[ws.url.path]
        if want and endpoint.kind != want:
            raise _Refused(403, f"this token opens a {endpoint.kind} console, not {want}; "
                                f"connect to / instead")
        return record, endpoint

    async def _connect(self, endpoint: ConsoleEndpoint):
        where = _where(endpoint)
        try:
            if endpoint.unix_path is not None:
                opening = asyncio.open_unix_connection(str(endpoint.unix_path), limit=CHUNK)
            else:
                opening = asyncio.open_connection(endpoint.host, endpoint.port, limit=CHUNK)
            return await asyncio.wait_for(opening, self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            log.warning("console endpoint %s unreachable: %s", where, e)
            raise _Refused(502, f"the {endpoint.kind} console is not reachable ({reason}); "
                                "is the server running?")


def _where(endpoint: ConsoleEndpoint) -> str:
    return str(endpoint.unix_path) if endpoint.unix_path else f"{endpoint.host}:{endpoint.port}"


def _token_of(ws: WebSocket) -> str:
    """?token= first (noVNC >= 1.0 via `path`, serial clients), then the
    `token` cookie older noVNC pages set."""
    token = ws.query_params.get("token", "")
    if not token:
        raw_cookie = ws.headers.get("cookie", "")
        try:
            cookie = SimpleCookie(raw_cookie)
        except CookieError:
            cookie = SimpleCookie()
        if "token" in cookie:
            token = cookie["token"].value
    return token


async def _deny(ws: WebSocket, status: int, reason: str) -> None:
    _denied.set(True)
    try:
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(PlainTextResponse(reason + "\n", status_code=status))
        else:
            # Servers without the denial extension answer 403 to a close before accept.
            await ws.close(code=1008, reason=reason[:120])
    except (OSError, RuntimeError, WebSocketDisconnect):
        pass  # the client did not wait for the answer


async def _pump(ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                kind: str, counts: list[int]) -> str:
    """Copy both ways until one side ends; returns why it ended. Memory stays
    bounded: one CHUNK in flight per direction, and each side waits for the
    other to drain (writer.drain(), the websocket's own send flow control)."""

    async def client_to_console() -> str:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return "client closed"
            data = message.get("bytes")
            if data is None:
                if kind != "serial":
                    raise _Protocol(1003, "VNC takes binary frames only")
                data = (message.get("text") or "").encode()
            counts[0] += len(data)
            writer.write(data)
            await writer.drain()

    async def console_to_client() -> str:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return "console closed"
            counts[1] += len(data)
            await ws.send_bytes(data)

    tasks = [asyncio.ensure_future(client_to_console()),
             asyncio.ensure_future(console_to_client())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finished = done.pop()
    code, why = 1000, "console closed"
    try:
        why = finished.result()
    except _Protocol as e:
        code, why = e.code, e.reason
    except WebSocketDisconnect:
        return "client closed"
    except (OSError, RuntimeError) as e:
        code, why = 1011, f"console connection failed: {e}"
    if why != "client closed":
        await _close_quietly(ws, code, why)
    return why


class _Protocol(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code=code, reason=reason[:120])
    except (RuntimeError, OSError):
        pass  # the client went away first


def _with_page_headers(send):
    """The page URL carries a token: never send it on as a Referer, and never
    let a browser guess a file's type."""
    extra = [(b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff")]

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


def build_console_app(resolve: Resolve, *, novnc_dir: Path | None,
                      allowed_origins: tuple[str, ...] = (),
                      max_connections: int = DEFAULT_MAX_CONNECTIONS) -> ConsoleProxy:
    if novnc_dir is None:
        log.warning("noVNC not found (%s); the console proxy serves websockets only. "
                    "fix: run `make novnc`", ", ".join(map(str, NOVNC_CANDIDATES)))
    return ConsoleProxy(resolve, novnc_dir=novnc_dir, allowed_origins=allowed_origins,
                        max_connections=max_connections)
