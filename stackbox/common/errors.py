"""Domain errors. They know nothing about HTTP: each API dialect maps them to
status codes and bodies in one table (see stackbox.common.http.errors)."""

from __future__ import annotations


class StackboxError(Exception):
    """Base of every error a service may raise on purpose."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(StackboxError):
    """The request is malformed or a field has a value that is not allowed."""


class NotAcceptable(BadRequest):
    """The requested API (micro)version is outside the supported range."""


class Unauthorized(StackboxError):
    """No credentials, or credentials that do not authenticate anyone."""


class Forbidden(StackboxError):
    """Authenticated, but policy does not allow this action."""


class NotFound(StackboxError):
    """The named resource does not exist (or the caller may not know it exists)."""


class Conflict(StackboxError):
    """The request conflicts with current state (duplicate name, resource in use)."""


class InvalidState(Conflict):
    """The resource is in a state where this action is not possible."""


class QuotaExceeded(StackboxError):
    """A project quota would be exceeded."""

    def __init__(self, resource: str, *, limit: int, in_use: int, requested: int):
        super().__init__(
            f"Quota exceeded for {resource}: requested {requested}, "
            f"in use {in_use}, limit {limit}")
        self.resource = resource
        self.limit = limit
        self.in_use = in_use
        self.requested = requested


class ServiceUnavailable(StackboxError):
    """A dependency (database, agent) is not available right now."""
