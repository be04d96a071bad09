"""Shared fixtures: real databases (SQLite, PostgreSQL and MariaDB), a real Redis database of the
test's own, the simulated provider over HTTP, and real Celery worker/beat processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.databases import (
    ALL_DATABASES,
    drop_stale_mysql_databases,
    drop_stale_postgres_databases,
    mysql_required,
    mysql_unavailable_reason,
    postgres_required,
    postgres_unavailable_reason,
    server_database,
)
from tests.support.deployment import applied_settings, settings_under_test
from tests.support.redis_db import REDIS_BASE_URL, claim_database, redis_reachable, release_database
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


def _server_available(
    name: str, reason: str | None, required: bool, drop_stale: Callable[[], object]
) -> bool:
    if reason is None:
        # Once a session, before its first database: what crashed runs left behind.
        drop_stale()
        return True
    if required:
        pytest.fail(f"{reason} ({name} tests are required in CI)")
    return False


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    return _server_available(
        "PostgreSQL", postgres_unavailable_reason(), postgres_required(), drop_stale_postgres_databases
    )


@pytest.fixture(scope="session")
def mysql_available() -> bool:
    return _server_available("MariaDB", mysql_unavailable_reason(), mysql_required(), drop_stale_mysql_databases)


@pytest.fixture(params=ALL_DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database, on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tracker.db'}"
        migrate.upgrade(url)
        yield url
        dispose_engines()
        return
    create, drop = server_database(request, str(request.param))
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
    with applied_settings(settings_under_test(database_url, broker_url, tmp_path / "state"), monkeypatch) as env:
        yield env
