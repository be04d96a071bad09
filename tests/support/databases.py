"""Throw-away databases for tests: a SQLite file, or a PostgreSQL or MariaDB database of its own."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

POSTGRES_ADMIN_URL = os.environ.get(
    "TRACKER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_required() -> bool:
    """In CI the PostgreSQL tests must run: a missing server is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("TRACKER_REQUIRE_POSTGRES") == "1"


def postgres_unavailable_reason() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).strip()[:200]}"


# Every database the tests (and benchmarks/) create is named PREFIX<unix time>_<pid>_<random>;
# older runs named them PREFIX<pid>_<random>. Only names with this prefix are ever dropped.
PREFIX = "tracker_test_"
# A crashed run's databases are dropped by the next test session once this old.
STALE_AFTER_SECONDS = 3600


def new_database_name() -> str:
    return f"{PREFIX}{int(time.time())}_{os.getpid()}_{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def is_stale(name: str, server_age_seconds: float | None, now: float | None = None) -> bool:
    """Whether a database is a crashed run's leftover: a test suite's own by its name, older
    than STALE_AFTER_SECONDS, and its creating process gone (a long benchmark still running
    on this machine keeps its database). ``server_age_seconds`` is the server's own age of
    the database, used for the older names without a time; None when the server cannot tell."""
    if not name.startswith(PREFIX):
        return False
    parts = name[len(PREFIX):].split("_")
    if not all(part.isalnum() for part in parts):
        return False
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        age = (time.time() if now is None else now) - int(parts[0])
        pid = int(parts[1])
    elif len(parts) == 2 and parts[0].isdigit():
        if server_age_seconds is None:
            return False
        age, pid = server_age_seconds, int(parts[0])
    else:
        return False
    return age > STALE_AFTER_SECONDS and not _pid_alive(pid)


def drop_stale_postgres_databases() -> list[str]:
    """Drops the test databases crashed runs left on the PostgreSQL server; their names."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        rows = connection.execute(
            # PG_VERSION is written when the database is created and never again: its age.
            "SELECT datname, EXTRACT(EPOCH FROM now() - (pg_stat_file('base/' || oid || '/PG_VERSION', true)).modification)"
            " FROM pg_database WHERE datname LIKE %s",
            (PREFIX.replace("_", "\\_") + "%",),
        ).fetchall()
        dropped = [name for name, age in rows if is_stale(name, None if age is None else float(age))]
        for name in dropped:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return dropped


def drop_stale_mysql_databases() -> list[str]:
    """Drops the test databases crashed runs left on the MariaDB server; their names."""
    connection = _mysql_connect(autocommit=True)
    try:
        with connection.cursor() as cursor:
            # MariaDB keeps no creation time of a database: its oldest table's stands in.
            cursor.execute(
                "SELECT s.SCHEMA_NAME, TIMESTAMPDIFF(SECOND, MIN(t.CREATE_TIME), NOW())"
                " FROM information_schema.SCHEMATA s"
                " LEFT JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME"
                " WHERE s.SCHEMA_NAME LIKE %s GROUP BY s.SCHEMA_NAME",
                (PREFIX.replace("_", "\\_") + "%",),
            )
            rows = cursor.fetchall()
        dropped = [str(name) for name, age in rows if is_stale(str(name), None if age is None else float(age))]
        for name in dropped:
            kill_other_mysql_connections(connection, name)
            with connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()
    return dropped


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def create_postgres_database() -> str:
    name = new_database_name()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(POSTGRES_ADMIN_URL, name)


def drop_postgres_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# MariaDB (or MySQL 8): a database of its own per test on the server at this URL.
MYSQL_ADMIN_URL = os.environ.get("TRACKER_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")


def mysql_required() -> bool:
    """In CI the MariaDB tests must run: a missing server is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("TRACKER_REQUIRE_MYSQL") == "1"


def _mysql_connect(**options: object) -> pymysql.connections.Connection[Any]:
    url = make_url(MYSQL_ADMIN_URL)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        **options,  # type: ignore[arg-type]
    )


def mysql_unavailable_reason() -> str | None:
    try:
        _mysql_connect(connect_timeout=3).close()
        return None
    except pymysql.err.MySQLError as exc:
        return f"MariaDB/MySQL not reachable at {MYSQL_ADMIN_URL}: {str(exc).strip()[:200]}"


def mysql_admin_execute(statement: str) -> list[tuple[Any, ...]]:
    """Runs one statement as the admin user, outside any database; the rows it returned."""
    connection = _mysql_connect(autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())
    finally:
        connection.close()


def create_mysql_database() -> str:
    name = new_database_name()
    # The server's default collation, as a shop's database has: the migrations set their own.
    mysql_admin_execute(f"CREATE DATABASE `{name}`")
    return make_url(MYSQL_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_mysql_database(url: str) -> None:
    name = make_url(url).database
    connection = _mysql_connect(autocommit=True)
    try:
        # Connections a test left behind (a killed worker's) would hold metadata locks.
        kill_other_mysql_connections(connection, name)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


# For tests that run on the server databases only (not SQLite): ``database_url`` params.
SERVER_DATABASES = [
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mysql),
]
# For tests that run on every database.
ALL_DATABASES = ["sqlite", *SERVER_DATABASES]


def server_database(
    request: pytest.FixtureRequest, kind: str
) -> tuple[Callable[[], str], Callable[[str], None]]:
    """How to create and drop a throw-away database of ``kind`` ("postgresql" or "mariadb");
    skips the test (or fails it, where CI requires the server) when the server is unavailable."""
    if kind == "mariadb":
        if not request.getfixturevalue("mysql_available"):
            pytest.skip(mysql_unavailable_reason() or "MariaDB unavailable")
        return create_mysql_database, drop_mysql_database
    if not request.getfixturevalue("postgres_available"):
        pytest.skip(postgres_unavailable_reason() or "PostgreSQL unavailable")
    return create_postgres_database, drop_postgres_database


def connect_mysql(url: str) -> pymysql.connections.Connection[Any]:
    """A plain driver connection to the database of a tracker ``mysql+pymysql://`` URL."""
    return _mysql_connect(database=make_url(url).database, autocommit=True)


def kill_other_mysql_connections(connection: pymysql.connections.Connection[Any], name: str | None = None) -> int:
    """Kills every other connection to database ``name`` (default: ``connection``'s own);
    how many it killed."""
    killed = 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM information_schema.processlist WHERE db = COALESCE(%s, DATABASE()) AND id <> CONNECTION_ID()",
            (name,),
        )
        for (thread_id,) in cursor.fetchall():
            try:
                cursor.execute(f"KILL {int(thread_id)}")
                killed += 1
            except pymysql.err.MySQLError:
                pass  # it ended in between
    return killed
