"""A unit of work interrupted mid-statement (a task's soft time limit is a signal whose
handler raises) must not hand its connection, still busy with the statement, to the next
unit of work: real PostgreSQL and MariaDB."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text

from tests.support.databases import SERVER_DATABASES
from tracker.db.session import unit_of_work
from tracker.worker import signals  # noqa: F401 - the worker's hooks: the soft time limit interrupts

pytestmark = pytest.mark.integration


@contextmanager
def soft_limit_after(seconds: float) -> Iterator[None]:
    def raise_soft_limit(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, raise_soft_limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_the_next_unit_of_work_after_an_interrupted_statement_works(tracker_env: dict[str, str]) -> None:
    sleep = "SELECT pg_sleep(3)" if tracker_env["TRACKER_DATABASE_URL"].startswith("postgresql") else "SELECT SLEEP(3)"
    with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.3), unit_of_work() as session:
        session.execute(text(sleep))
    for _ in range(3):
        with unit_of_work() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
