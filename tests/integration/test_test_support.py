"""The suite's own housekeeping: a Redis claim expires, and databases a crashed run left
are dropped by the next session, only the test suite's own and only once stale."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from psycopg import sql

from tests.support import databases
from tests.support.databases import (
    POSTGRES_ADMIN_URL,
    PREFIX,
    STALE_AFTER_SECONDS,
    create_mysql_database,
    create_postgres_database,
    drop_mysql_database,
    drop_postgres_database,
    drop_stale_mysql_databases,
    drop_stale_postgres_databases,
    is_stale,
    mysql_admin_execute,
)
from tests.support.redis_db import CLAIM_KEY, CLAIM_SECONDS, USED_KEY, _take

pytestmark = pytest.mark.integration


def _dead_pid() -> int:
    """A process ID nobody has now."""
    for pid in range(4_000_000, 4_100_000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise RuntimeError("no free pid found")


@pytest.fixture
def own_db(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    try:
        yield client
    finally:
        client.close()


def test_a_claim_expires(own_db: redis.Redis) -> None:
    assert 0 < int(own_db.ttl(CLAIM_KEY)) <= CLAIM_SECONDS
    assert own_db.exists(USED_KEY)


def test_a_crashed_runs_database_is_taken_back_and_flushed(own_db: redis.Redis) -> None:
    own_db.set("celery-leftover", "x")
    own_db.delete(CLAIM_KEY)  # as if its claim had expired
    assert _take(own_db, "next-run", 60)
    assert own_db.get(CLAIM_KEY) == b"next-run" and own_db.exists(USED_KEY)
    assert not own_db.exists("celery-leftover")


def test_a_live_claim_is_respected(own_db: redis.Redis) -> None:
    own_db.set("celery-data", "x")
    assert not _take(own_db, "intruder", 60)
    assert own_db.get(CLAIM_KEY) != b"intruder" and own_db.exists("celery-data")


def test_someone_elses_database_is_never_touched(own_db: redis.Redis) -> None:
    own_db.delete(CLAIM_KEY, USED_KEY)
    own_db.set("not-a-test-key", "x")
    assert not _take(own_db, "test-run", 60)
    assert own_db.exists("not-a-test-key") and not own_db.exists(CLAIM_KEY)


def test_which_names_are_stale() -> None:
    now = time.time()
    dead, alive = _dead_pid(), os.getpid()
    old = int(now) - STALE_AFTER_SECONDS - 60
    assert is_stale(f"{PREFIX}{old}_{dead}_ab12cd34", None, now)
    assert not is_stale(f"{PREFIX}{old}_{alive}_ab12cd34", None, now), "its process still runs"
    assert not is_stale(f"{PREFIX}{int(now)}_{dead}_ab12cd34", None, now), "not old yet"
    # The older names, without a time: the server's age of the database decides.
    assert is_stale(f"{PREFIX}{dead}_ab12cd34", STALE_AFTER_SECONDS + 1, now)
    assert not is_stale(f"{PREFIX}{dead}_ab12cd34", 10, now)
    assert not is_stale(f"{PREFIX}{dead}_ab12cd34", None, now)
    # Not the suite's own: never.
    assert not is_stale(f"tracker_{old}_{dead}_ab12cd34", 1e9, now)
    assert not is_stale("test", 1e9, now)
    assert not is_stale(f"{PREFIX}production", 1e9, now)


def _stale_name() -> str:
    return f"{PREFIX}{int(time.time()) - STALE_AFTER_SECONDS - 60}_{_dead_pid()}_0ddba11e"


@pytest.mark.postgres
def test_stale_postgres_databases_are_dropped(postgres_available: bool) -> None:
    if not postgres_available:
        pytest.skip("PostgreSQL unavailable")
    stale = _stale_name()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(stale)))
    fresh = create_postgres_database()
    try:
        assert stale in drop_stale_postgres_databases()
        with psycopg.connect(POSTGRES_ADMIN_URL) as connection:
            names = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        assert stale not in names
        assert fresh.rpartition("/")[2] in names
    finally:
        drop_postgres_database(fresh)
        drop_postgres_database(databases._with_database(POSTGRES_ADMIN_URL, stale))


@pytest.mark.mysql
def test_stale_mariadb_databases_are_dropped(mysql_available: bool) -> None:
    if not mysql_available:
        pytest.skip("MariaDB unavailable")
    stale = _stale_name()
    mysql_admin_execute(f"CREATE DATABASE `{stale}`")
    fresh = create_mysql_database()
    try:
        assert stale in drop_stale_mysql_databases()
        names = {str(row[0]) for row in mysql_admin_execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")}
        assert stale not in names
        assert fresh.rpartition("/")[2] in names
    finally:
        drop_mysql_database(fresh)
        mysql_admin_execute(f"DROP DATABASE IF EXISTS `{stale}`")
