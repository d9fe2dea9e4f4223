"""Object-store errors. Subclasses of the common domain errors, so the HTTP
dialect tables (which walk the MRO) map them without knowing they exist."""

from __future__ import annotations

from stackbox.common.errors import BadRequest, Conflict, NotFound, ServiceUnavailable, StackboxError


class CorruptFile(StackboxError):
    """An on-disk file (ring, object) failed its format or checksum checks.

    Not a client error: it maps to 500 and should be fixed by an operator
    (or by the auditor/replicator, for objects)."""

    def __init__(self, message: str, *, path: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class OlderTimestamp(Conflict):
    """A PUT or DELETE carried a timestamp not newer than what is on disk.

    Swift's object server answers 409 here and its proxy turns that into 202:
    the request is accepted and silently loses to the newer write."""

    def __init__(self, message: str, *, timestamp: str, existing: str):
        super().__init__(message, field="timestamp")
        self.timestamp = timestamp
        self.existing = existing


class Quarantined(NotFound):
    """The object was found corrupt and moved aside; to a client it is gone
    until replication brings a good copy back."""


class InsufficientStorage(ServiceUnavailable):
    """Too few devices could take a write (missing, full, failing): Swift's 507."""


class EntityTooLarge(BadRequest):
    """Object, metadata or manifest over a limit: 413."""


class Unprocessable(BadRequest):
    """The body does not match what the client promised (ETag): 422."""


class PreconditionFailed(StackboxError):
    """If-Match / If-None-Match / If-(Un)Modified-Since did not hold: 412."""
