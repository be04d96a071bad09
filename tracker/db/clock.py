"""The database's clock: the one clock every worker agrees on.

Worker wall clocks drift, and one running ahead would make every other worker's answers
look older than its own, so the orders it polled would ignore their answers until real
time caught up; a worker's lease or due time compared with another's would be off by the
difference. So every time that is written for, or compared with, another worker's is the
database's: the dispatcher's ticks, the poll engine, refill attempts, the outbox's leases,
the shop's orders, syncs and probes read it once (one round trip per unit of work) and
count elapsed time locally, on the monotonic clock, from there.

On SQLite the database's clock is the host's own (SQLite runs in the process): a SQLite
deployment is one host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from tracker.db.session import UnitOfWork

_NOW = {
    "postgresql": "SELECT clock_timestamp()",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
}


def database_now(session: Session) -> datetime:
    """The database server's current time, in UTC."""
    value = session.scalar(text(_NOW[session.get_bind().dialect.name]))
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        raise TypeError(f"the database answered {value!r} for the time")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def database_time(unit_of_work: UnitOfWork) -> datetime:
    """The database's time, read in a short read-only unit of work of its own."""
    with unit_of_work(read_only=True) as session:
        return database_now(session)


def database_clock(session: Session) -> Callable[[], datetime]:
    """A clock that reads the database's time now and moves on from there by this
    process's elapsed time (the monotonic clock): one round trip, and no wall clock, so a
    host whose clock is off, or is stepped by NTP meanwhile, still agrees."""
    start = database_now(session)
    started = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - started)
