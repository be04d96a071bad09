"""Shared fixtures: real databases (SQLite, PostgreSQL and MariaDB), a real Redis database of the
test's own, the simulated provider over HTTP, and real Celery worker/beat processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.databases import (
    create_mysql_database,
    create_postgres_database,
    drop_mysql_database,
    drop_postgres_database,
    drop_stale_mysql_databases,
    drop_stale_postgres_databases,
    mysql_required,
    mysql_unavailable_reason,
    postgres_required,
    postgres_unavailable_reason,
)
from tests.support.redis_db import REDIS_BASE_URL, claim_database, redis_reachable, release_database
from tracker.config import reset_settings
from tracker.db import migrate
from tracker.db.session import dispose_engines
from tracker.ops.bundled_redis import BundledRedis

# The API key every test provider uses: distinctive, so leaks are easy to find.
TEST_API_KEY = "sk-TEST-9f2c1e7a5b3d4c8e"


INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration is ``integration``, marked in its file or not, so
    ``-m "not integration"`` never starts a server a new file forgot to declare."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    reason = postgres_unavailable_reason()
    if reason is None:
        # Once a session, before its first database: what crashed runs left behind.
        drop_stale_postgres_databases()
        return True
    if postgres_required():
        pytest.fail(f"{reason} (PostgreSQL tests are required in CI)")
    return False


@pytest.fixture(scope="session")
def mysql_available() -> bool:
    reason = mysql_unavailable_reason()
    if reason is None:
        drop_stale_mysql_databases()
        return True
    if mysql_required():
        pytest.fail(f"{reason} (MariaDB tests are required in CI)")
    return False


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mysql),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database, on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tracker.db'}"
        migrate.upgrade(url)
        yield url
        dispose_engines()
        return
    if request.param == "mariadb":
        if not request.getfixturevalue("mysql_available"):
            pytest.skip(mysql_unavailable_reason() or "MariaDB unavailable")
        create, drop = create_mysql_database, drop_mysql_database
    else:
        if not request.getfixturevalue("postgres_available"):
            pytest.skip(postgres_unavailable_reason() or "PostgreSQL unavailable")
        create, drop = create_postgres_database, drop_postgres_database
    url = create()
    try:
        migrate.upgrade(url)
        yield url
    finally:
        dispose_engines()
        drop(url)


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if redis_reachable(REDIS_BASE_URL):
        yield REDIS_BASE_URL
        return
    server = BundledRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def broker_url(redis_base_url: str) -> Iterator[str]:
    number = claim_database(redis_base_url)
    try:
        yield f"{redis_base_url}/{number}"
    finally:
        release_database(redis_base_url, number)


@pytest.fixture
def tracker_env(
    database_url: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment of a tracker deployment under test, applied to this process too
    (for direct database access) and returned for subprocesses."""
    values = {
        "TRACKER_DATABASE_URL": database_url,
        "TRACKER_BROKER_URL": broker_url,
        "TRACKER_SECRET_KEY": Fernet.generate_key().decode(),
        "TRACKER_POLL_INTERVAL": "1",
        "TRACKER_TICK_INTERVAL": "1",
        "TRACKER_MAX_POLL_BACKOFF": "2",
        "TRACKER_NOT_FOUND_AFTER": "3",
        # Short leases, so work lost with the broker comes back within the test's patience.
        "TRACKER_LEASE_SECONDS": "10",
        "TRACKER_STATE_DIR": str(tmp_path / "state"),
        "TRACKER_MODE": "production",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    dispose_engines()
    env = dict(os.environ)
    yield env
    reset_settings()
    dispose_engines()
