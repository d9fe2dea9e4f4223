"""Error dialects: one table maps domain errors to status codes, and each
OpenStack service renders the body its clients expect."""

from __future__ import annotations

import html
import json
import logging
from typing import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from stackbox.common import errors

log = logging.getLogger("stackbox.http")

STATUS: dict[type[Exception], int] = {
    errors.NotAcceptable: 406,
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.QuotaExceeded: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ServiceUnavailable: 503,
}

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
          413: "Request Entity Too Large", 415: "Unsupported Media Type",
          416: "Requested Range Not Satisfiable", 500: "Internal Server Error",
          503: "Service Unavailable"}


def status_for(exc: Exception) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def message_for(exc: Exception, status: int) -> str:
    if isinstance(exc, errors.StackboxError):
        return exc.message
    if isinstance(exc, HTTPException):
        return exc.detail if exc.detail != TITLES.get(status) else _default_message(status)
    return "An unexpected error prevented the server from fulfilling your request."


def _default_message(status: int) -> str:
    return {404: "The resource could not be found.",
            405: "The method is not allowed for the requested URL."}.get(
        status, TITLES.get(status, "Error"))


class Dialect:
    """Renders an error the way one OpenStack service does."""

    # a dialect's own exceptions to the STATUS table (Glance: quota -> 413)
    STATUS_OVERRIDES: dict[type[Exception], int] = {}

    def body(self, status: int, message: str, exc: Exception) -> dict:
        raise NotImplementedError

    def extra_headers(self, status: int) -> dict[str, str]:
        return {}

    def status(self, exc: Exception) -> int:
        for cls in type(exc).__mro__:
            if cls in self.STATUS_OVERRIDES:
                return self.STATUS_OVERRIDES[cls]
        return status_for(exc)

    def headers_for(self, exc: Exception, status: int) -> dict[str, str]:
        headers = self.extra_headers(status)
        if isinstance(exc, HTTPException) and exc.headers:
            headers.update(exc.headers)
        return headers

    def render(self, exc: Exception, *, accept: str = "") -> Response:
        status = self.status(exc)
        message = message_for(exc, status)
        return Response(json.dumps(self.body(status, message, exc)), status_code=status,
                        media_type="application/json", headers=self.headers_for(exc, status))


class KeystoneDialect(Dialect):
    """{"error": {"code": 404, "title": "Not Found", "message": "..."}}"""

    def __init__(self, auth_url: Callable[[], str] | None = None):
        self._auth_url = auth_url

    def body(self, status, message, exc):
        return {"error": {"code": status, "title": TITLES.get(status, "Error"),
                          "message": message}}

    def extra_headers(self, status):
        if status == 401 and self._auth_url:
            return {"WWW-Authenticate": f'Keystone uri="{self._auth_url()}"'}
        return {}


class NovaDialect(Dialect):
    """{"itemNotFound": {"code": 404, "message": "..."}}"""

    NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
             405: "badMethod", 409: "conflictingRequest", 413: "overLimit",
             500: "computeFault", 503: "serviceUnavailable"}

    def body(self, status, message, exc):
        return {self.NAMES.get(status, "computeFault"): {"code": status, "message": message}}


class GlanceDialect(Dialect):
    """Glance answers through webob: HTML unless the client prefers JSON
    (`{"message", "code": "404 Not Found", "title"}`) or plain text
    ("404 Not Found\n\nmessage"). openstacksdk reads the message out of the
    HTML or JSON; a storage quota is 413 Request Entity Too Large."""

    STATUS_OVERRIDES = {errors.QuotaExceeded: 413}

    def body(self, status, message, exc):
        return {"message": message, "code": f"{status} {TITLES.get(status, 'Error')}",
                "title": TITLES.get(status, "Error")}

    def render(self, exc: Exception, *, accept: str = "") -> Response:
        status = self.status(exc)
        message = message_for(exc, status)
        headers = self.headers_for(exc, status)
        line = f"{status} {TITLES.get(status, 'Error')}"
        accept = accept.lower()
        if "application/json" in accept and "text/html" not in accept:
            return Response(json.dumps(self.body(status, message, exc)), status_code=status,
                            media_type="application/json", headers=headers)
        if "text/plain" in accept and "text/html" not in accept:
            return Response(f"{line}\n\n{message}\n\n   ", status_code=status,
                            media_type="text/plain", headers=headers)
        text = html.escape(message)
        page = (f"<html>\n <head>\n  <title>{line}</title>\n </head>\n <body>\n"
                f"  <h1>{line}</h1>\n  {text}<br /><br />\n\n\n\n </body>\n</html>")
        return Response(page, status_code=status, media_type="text/html",
                        headers=headers)


class NeutronDialect(Dialect):
    """{"NeutronError": {"type": "NetworkNotFound", "message": "...", "detail": ""}}.
    The type is the domain error's `neutron_type` when it has one (Neutron's
    exception class names), else the webob name for the status. A quota is
    409 OverQuota in Neutron."""

    STATUS_OVERRIDES = {errors.QuotaExceeded: 409}
    TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden",
             404: "HTTPNotFound", 405: "HTTPMethodNotAllowed", 409: "HTTPConflict",
             413: "HTTPRequestEntityTooLarge", 500: "HTTPInternalServerError",
             503: "HTTPServiceUnavailable"}

    def body(self, status, message, exc):
        kind = getattr(exc, "neutron_type", None)
        if kind is None and isinstance(exc, errors.QuotaExceeded):
            kind = "OverQuota"
        return {"NeutronError": {"type": kind or self.TYPES.get(status, "HTTPError"),
                                 "message": message, "detail": ""}}


def error_response(dialect: Dialect, request: Request, exc: Exception) -> Response:
    """The dialect's answer to an error (a 5xx is logged with its traceback)."""
    if dialect.status(exc) >= 500:
        log.exception("unhandled error on %s %s", request.method, request.url.path,
                      exc_info=exc)
    return dialect.render(exc, accept=request.headers.get("accept", ""))


def install_handlers(app, dialect: Dialect) -> None:
    async def handle(request: Request, exc: Exception) -> Response:
        return error_response(dialect, request, exc)

    app.add_exception_handler(errors.StackboxError, handle)
    app.add_exception_handler(HTTPException, handle)
    app.add_exception_handler(Exception, handle)
