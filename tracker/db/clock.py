"""The database's clock: the one clock every worker agrees on.

Worker wall clocks drift, and one running ahead would make every other worker's answers
look older than its own, so the orders it polled would ignore their answers until real
time caught up. The dispatcher's ticks and the poll engine read the time from the
database instead (one round trip per tick or task) and count elapsed time locally from
there.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

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


def database_clock(session: Session, local: Callable[[], datetime]) -> Callable[[], datetime]:
    """A clock that reads the database's time now and moves on with ``local`` from there."""
    offset = database_now(session) - local()
    return lambda: local() + offset
