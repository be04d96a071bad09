"""A tracker deployment's settings for a whole test module: one database and one Redis
database number shared by the tests that check one scenario, so each check is a test of
its own (one failure does not hide the others) and the scenario still runs once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.databases import (
    create_mysql_database,
    create_postgres_database,
    drop_mysql_database,
    drop_postgres_database,
)
from tests.support.redis_db import claim_database, release_database
from tracker.config import reset_settings
from tracker.db import migrate
from tracker.db.session import dispose_engines

# For a module-scoped scenario fixture's ``params``.
ALL_DATABASES = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mysql),
]
SERVER_DATABASES_ONLY = ALL_DATABASES[1:]


@contextmanager
def module_deployment(
    request: pytest.FixtureRequest, redis_base_url: str, tmp_path: Path, extra: dict[str, str]
) -> Iterator[tuple[dict[str, str], pytest.MonkeyPatch]]:
    """The same environment as the ``tracker_env`` fixture (plus ``extra``), applied to this
    process until the block ends; yields it (for subprocesses) and the monkeypatch that set it."""
    kind = str(request.param)
    if kind == "mariadb":
        if not request.getfixturevalue("mysql_available"):
            pytest.skip("MariaDB unavailable")
        create, drop = create_mysql_database, drop_mysql_database
    elif kind == "postgresql":
        if not request.getfixturevalue("postgres_available"):
            pytest.skip("PostgreSQL unavailable")
        create, drop = create_postgres_database, drop_postgres_database
    database_url = f"sqlite:///{tmp_path / 'tracker.db'}" if kind == "sqlite" else create()
    number = claim_database(redis_base_url)
    values = {
        "TRACKER_DATABASE_URL": database_url,
        "TRACKER_BROKER_URL": f"{redis_base_url}/{number}",
        "TRACKER_SECRET_KEY": Fernet.generate_key().decode(),
        "TRACKER_POLL_INTERVAL": "1",
        "TRACKER_TICK_INTERVAL": "1",
        "TRACKER_MAX_POLL_BACKOFF": "2",
        "TRACKER_NOT_FOUND_AFTER": "3",
        "TRACKER_LEASE_SECONDS": "10",
        "TRACKER_STATE_DIR": str(tmp_path / "state"),
        "TRACKER_MODE": "production",
        **extra,
    }
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for name, value in values.items():
                monkeypatch.setenv(name, value)
            reset_settings()
            dispose_engines()
            migrate.upgrade(database_url)
            try:
                yield dict(os.environ), monkeypatch
            finally:
                reset_settings()
                dispose_engines()
    finally:
        release_database(redis_base_url, number)
        if kind != "sqlite":
            drop(database_url)
