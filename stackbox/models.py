"""Every service's tables, gathered for Alembic. Services import their own
models module, never another service's."""

from stackbox.common.db import Base
from stackbox.common import registry  # noqa: F401  (agents/service heartbeats)
from stackbox.identity import models as _identity  # noqa: F401
from stackbox.image import models as _image  # noqa: F401
from stackbox.compute import models as _compute  # noqa: F401
from stackbox.network import models as _network  # noqa: F401
from stackbox.objectstore import models as _objectstore  # noqa: F401

metadata = Base.metadata
