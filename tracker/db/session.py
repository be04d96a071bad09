"""Engines and the unit of work.

One session and one transaction per unit of work, as in pypi/warehouse: a task opens
``unit_of_work()``, does its reads and writes, and the block commits once at the end (or
rolls back on any exception). Messages to the broker are sent only after that commit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from tracker.config import get_settings, normalize_database_url

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _configure_sqlite(engine: Engine) -> None:
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
        # Take the write lock up front. A deferred transaction that reads and then writes
        # fails at once with "database is locked" when another writer got in between,
        # instead of waiting out the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
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
        return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    key = normalize_database_url(url or get_settings().database_url)
    get_engine(key)
    return _factories[key]


@contextmanager
def unit_of_work(url: str | None = None) -> Iterator[Session]:
    """One session, one transaction: commit on success, roll back on any exception."""
    with session_factory(url)() as session, session.begin():
        yield session


def dispose_engines() -> None:
    """Close pooled connections: after fork, and in tests that drop their database."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()
