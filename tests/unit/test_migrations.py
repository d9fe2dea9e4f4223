"""Migrations and models agree, on SQLite and on PostgreSQL, and applying
them is idempotent (an existing data dir keeps working)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from stackbox.common.db import Database, make_engine, migrate
from stackbox.models import metadata
from stackbox.identity.models import Domain


def _check(url: str) -> None:
    assert migrate(url) == ["0001", "0002", "0003", "0004", "0005", "0006"]
    with Database(url).transaction() as s:
        s.add(Domain(id="d1", name="kept", description="", enabled=True))
    assert migrate(url) == []  # nothing pending the second time
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"
    db = Database(url)
    with db.read() as s:
        assert s.get(Domain, "d1").name == "kept"
    db.dispose()


def test_sqlite_migrations(tmp_path):
    _check(f"sqlite:///{tmp_path / 'm.sqlite'}")


@pytest.mark.postgres
def test_postgresql_migrations(pg_database):
    _check(pg_database)
