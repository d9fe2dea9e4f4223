"""Building a service's ASGI app and serving every service from one process.

One uvicorn server listens on every service's socket; PortDispatcher sends each
connection to the app of the port it arrived on.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from stackbox.common.http.errors import Dialect, error_response, install_handlers
from stackbox.common.http.middleware import (AccessLogMiddleware, RequestIdMiddleware,
                                             TokenAuthMiddleware, TokenValidator)


def build_service_app(name: str, routes: Sequence[BaseRoute] = (), *, dialect: Dialect,
                      validator: TokenValidator, auth_required: bool,
                      public: Callable[[str, str], bool] = lambda m, p: False,
                      handler: Callable[[Request], Awaitable[Response]] | None = None):
    """The middleware order, outermost first: request id, access log, token auth.
    `handler` instead of `routes`: one endpoint takes every request (HandlerApp)."""
    if handler is not None:
        app = HandlerApp(handler, dialect)

        def routed(scope) -> bool:
            return True
    else:
        app = Starlette(routes=list(routes))
        install_handlers(app, dialect)

        def routed(scope) -> bool:
            return any(route.matches(scope)[0] is not Match.NONE for route in app.routes)

    stack = TokenAuthMiddleware(app, validator=validator, dialect=dialect,
                                required=auth_required, public=public, routed=routed)
    stack = AccessLogMiddleware(stack, service=name)
    return RequestIdMiddleware(stack)


class HandlerApp:
    """An HTTP service whose one endpoint takes every path and method (the
    object store's, which routes by itself): the endpoint and the dialect's
    error pages, without Starlette's router and its two exception layers,
    about a tenth of the CPU of a small object request. As there, an error
    raised once the response has started is left to the server (it closes
    the connection)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]], dialect: Dialect):
        self.handler = handler
        self.dialect = dialect

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        request = Request(scope, receive, send)
        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            response = await self.handler(request)
            await response(scope, receive, watched_send)
        except Exception as exc:
            if started:
                raise
            await error_response(self.dialect, request, exc)(scope, receive, send)


class PortDispatcher:
    """Routes a connection to the app serving the local port it came in on."""

    def __init__(self, apps_by_port: dict[int, object]):
        self.apps = apps_by_port

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        server = scope.get("server") or (None, None)
        app = self.apps.get(server[1])
        if app is None:
            raise RuntimeError(f"no service on port {server[1]}")
        await app(scope, receive, send)
