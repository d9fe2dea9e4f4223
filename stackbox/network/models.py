"""network tables."""

from stackbox.common.db import Base  # noqa: F401
