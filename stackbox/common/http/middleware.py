"""Pure ASGI middleware, one concern each. Their order is written once, in
stackbox.common.http.app.build_service_app."""

from __future__ import annotations

import logging
import random
import time
from typing import Awaitable, Callable, Protocol

from starlette.concurrency import run_in_threadpool

from stackbox.common import errors
from stackbox.common.http.context import RequestContext
from stackbox.common.http.errors import Dialect

access_log = logging.getLogger("stackbox.access")

CONTEXT_KEY = "stackbox.context"
REQUEST_ID_KEY = "stackbox.request_id"


class TokenValidator(Protocol):
    def validate_cached(self, token: str) -> RequestContext | None: ...
    def validate(self, token: str) -> RequestContext: ...


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


_ids = random.Random()      # seeded from os.urandom; ids need to be unique, not secret


def new_request_id() -> str:
    """req-<uuid4>, from the process's Random: uuid.uuid4() (a getrandom
    call and UUID's Python constructor) cost more than this whole
    middleware on every object request."""
    h = "%032x" % _ids.getrandbits(128)
    return (f"req-{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-"
            f"{h[20:]}")


class RequestIdMiddleware:
    """Gives every request an id (req-<uuid>) and returns it to the client in
    x-openstack-request-id, as every OpenStack service does."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id()
        scope[REQUEST_ID_KEY] = request_id
        raw = request_id.encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-openstack-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class AccessLogMiddleware:
    """One line per request: request id, user, project, method, path, status, ms."""

    def __init__(self, app, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            ctx: RequestContext | None = scope.get(CONTEXT_KEY)
            ms = (time.perf_counter() - started) * 1000
            qs = scope.get("query_string", b"")
            path = scope["path"] + ("?" + qs.decode("latin-1") if qs else "")
            access_log.info("%s %s user=%s project=%s %s %s %d %.1fms",
                            self.service, scope.get(REQUEST_ID_KEY, "-"),
                            (ctx and ctx.user_id) or "-", (ctx and ctx.project_id) or "-",
                            scope["method"], path, status[0], ms)


class TokenAuthMiddleware:
    """Validates X-Auth-Token (cached, revocation-aware) and stores the
    RequestContext in the scope. With `required`, a request without a valid
    token is answered 401 here, except for `public` paths (version documents)."""

    def __init__(self, app, *, validator: TokenValidator, dialect: Dialect,
                 required: bool, public: Callable[[str, str], bool] = lambda m, p: False,
                 routed: Callable[[dict], bool] = lambda scope: True):
        self.app = app
        self.routed = routed
        self.validator = validator
        self.dialect = dialect
        self.required = required
        self.public = public

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = scope.get(REQUEST_ID_KEY) or new_request_id()
        token = _header(scope, b"x-auth-token")
        try:
            if token:
                ctx = self.validator.validate_cached(token)
                if ctx is None:
                    ctx = await run_in_threadpool(self.validator.validate, token)
                scope[CONTEXT_KEY] = ctx.with_request_id(request_id)
            elif (self.required and not self.public(scope["method"], scope["path"])
                  and self.routed(scope)):
                # An unknown path is a 404 even without a token, as in Keystone.
                raise errors.Unauthorized("The request you have made requires authentication.")
            else:
                scope[CONTEXT_KEY] = RequestContext(request_id=request_id)
        except errors.StackboxError as exc:
            response = self.dialect.render(exc)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def context_of(request) -> RequestContext:
    ctx = request.scope.get(CONTEXT_KEY)
    return ctx if ctx is not None else RequestContext(
        request_id=request.scope.get(REQUEST_ID_KEY, "-"))


Handler = Callable[..., Awaitable]
