"""Image-service domain errors (no HTTP; the Glance dialect maps them)."""

from __future__ import annotations

from stackbox.common.errors import BadRequest


class ImageRejected(BadRequest):
    """Uploaded data is not what was declared, or is unsafe to keep (backing
    file, external data file). Nothing of it is kept."""
