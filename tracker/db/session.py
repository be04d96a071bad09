"""Engines and the unit of work.

One session and one transaction per unit of work, as in pypi/warehouse: a task opens
``unit_of_work()``, does its reads and writes, and the block commits once at the end (or
rolls back on any exception). Messages to the broker are sent only after that commit.

Work that only reads opens ``unit_of_work(read_only=True)``: on SQLite a deferred
transaction (plain ``BEGIN``), so it never queues for the write lock behind a worker's
batch, with ``PRAGMA query_only`` on; on PostgreSQL and MySQL a ``READ ONLY``
transaction. A write in one fails at once instead of quietly taking the write path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from tracker.config import get_settings, is_mysql_url, normalize_database_url
from tracker.core.time_limits import interruptions

T = TypeVar("T")

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_read_only_factories: dict[str, sessionmaker[Session]] = {}
# Execution option of read-only engines; the SQLite hooks below read it at BEGIN.
READ_ONLY = "tracker_read_only"
# Whether a pooled SQLite connection has query_only on (kept in its pool record's info).
_QUERY_ONLY = "tracker_query_only"


class UnitOfWork(Protocol):
    """What use cases open their transactions with: ``unit_of_work`` in production,
    ``unit_of_work_on(engine)`` for another engine (``tracker.testing``'s in-memory one)."""

    def __call__(self, *, read_only: bool = False) -> AbstractContextManager[Session]: ...


def configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets readers (the CLI, stats) run while a worker writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        read_only = bool(connection.get_execution_options().get(READ_ONLY, False))
        if connection.info.get(_QUERY_ONLY, False) != read_only:
            # Pooled connections serve both kinds of work: switch only when it changes.
            connection.exec_driver_sql(f"PRAGMA query_only = {int(read_only)}")
            connection.info[_QUERY_ONLY] = read_only
        if read_only:
            # Reads need no write lock: a deferred transaction reads the last committed
            # state (WAL) while a worker holds the lock.
            connection.exec_driver_sql("BEGIN")
            return
        # Take the write lock up front. A deferred transaction that reads and then writes
        # fails at once with "database is locked" when another writer got in between,
        # instead of waiting out the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# MySQL closes connections idle for wait_timeout (8 hours by default, often minutes on
# shared hosting); pool_pre_ping catches those, recycling keeps them from piling up.
MYSQL_POOL_RECYCLE_SECONDS = 1800
# Strict: a value that does not fit is an error, as on PostgreSQL, never silently cut.
# NO_BACKSLASH_ESCAPES stays as the server has it; the driver quotes for either.
_MYSQL_INIT = "SET SESSION sql_mode = TRIM(BOTH ',' FROM CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES'))"


def _configure_mysql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY, False):
            # The driver began nothing yet (MySQL starts transactions implicitly): start
            # this one read-only, so a write in it fails at once.
            connection.exec_driver_sql("START TRANSACTION READ ONLY")


def make_engine(url: str) -> Engine:
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        configure_sqlite(engine)
        return engine
    if is_mysql_url(url):
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=10,
            pool_recycle=MYSQL_POOL_RECYCLE_SECONDS,
            # As on PostgreSQL: each statement sees what is committed when it starts, and
            # a claim's FOR UPDATE SKIP LOCKED locks only the rows it takes (REPEATABLE
            # READ, MySQL's default, would also lock the gaps between them).
            isolation_level="READ COMMITTED",
            connect_args={"charset": "utf8mb4", "init_command": _MYSQL_INIT},
        )
        _configure_mysql(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: TRACKER_DATABASE_URL)."""
    key = normalize_database_url(url or get_settings().database_url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
            _factories[key] = sessionmaker(engine, expire_on_commit=False)
            _read_only_factories[key] = sessionmaker(_read_only(engine), expire_on_commit=False)
        return engine


def _read_only(engine: Engine) -> Engine:
    """The same engine and pool, with transactions that only read."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        # psycopg then begins with BEGIN READ ONLY; the option is reset on return to the pool.
        options["postgresql_readonly"] = True
    return engine.execution_options(**options)


def read_only_engine(url: str | None = None) -> Engine:
    """``get_engine(url)`` for connections that only read (see the module's docstring)."""
    return _read_only(get_engine(url))


def session_factory(url: str | None = None, *, read_only: bool = False) -> sessionmaker[Session]:
    key = normalize_database_url(url or get_settings().database_url)
    get_engine(key)
    return (_read_only_factories if read_only else _factories)[key]


@contextmanager
def unit_of_work(url: str | None = None, *, read_only: bool = False) -> Iterator[Session]:
    """One session, one transaction: commit on success, roll back on any exception.

    ``read_only``: for work that writes nothing (views, stats, reading claimed rows).
    """
    with _transaction(session_factory(url, read_only=read_only)) as session:
        yield session


def unit_of_work_on(engine: Engine) -> UnitOfWork:
    """``unit_of_work`` for a given engine instead of TRACKER_DATABASE_URL's."""
    factories = {
        False: sessionmaker(engine, expire_on_commit=False),
        True: sessionmaker(_read_only(engine), expire_on_commit=False),
    }

    @contextmanager
    def on_engine(*, read_only: bool = False) -> Iterator[Session]:
        with _transaction(factories[read_only]) as session:
            yield session

    return on_engine


@contextmanager
def _transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        transaction = session.begin()
        try:
            yield session
            # As session.begin()'s own context manager: the caller may have ended it
            # already. Inside the guard: an interruption can land during COMMIT too.
            if transaction.is_active:
                transaction.commit()
        except interruptions():
            # Raised by a signal handler (a task's soft time limit), maybe in the middle of
            # a statement or of COMMIT: the connection may still be busy with it, so it is
            # neither rolled back (which would fail on it) nor returned to the pool, where
            # the next unit of work would find it broken. The server ends the transaction.
            session.invalidate()
            raise
        except BaseException:
            if transaction.is_active:
                transaction.rollback()
            raise


def dispose_engines(*, close: bool = True) -> None:
    """Forget every engine and its pooled connections: in tests that drop their database,
    and (``close=False``) in a forked child, which must neither use nor close the sockets
    it shares with its parent (SQLAlchemy's advice for ``os.fork``)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=close)
        _engines.clear()
        _factories.clear()
        _read_only_factories.clear()


def write_with_retries(write: Callable[[], T], *, tries: int = 3, pause: float = 0.5) -> T:
    """Run ``write`` (which opens its own unit of work) again after a database error, a
    few times: for writes of answers that cannot be asked for again (a refill's or a
    cancel's), where the alternative is losing them. The last error is raised."""
    for attempt in range(tries):
        try:
            return write()
        except DBAPIError:
            if attempt + 1 == tries:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable: the last try returns or raises")
