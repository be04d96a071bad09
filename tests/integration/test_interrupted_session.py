"""A unit of work interrupted mid-statement or during its COMMIT (a task's soft time limit
is a signal whose handler raises) must not hand its connection, still busy, to the next
unit of work: real PostgreSQL and MariaDB, and SQLite for the COMMIT."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Connection, create_engine, event, text

from tests.support.databases import SERVER_DATABASES
from tests.support.soft_limit import soft_limit_after
from tracker.db.session import get_engine, unit_of_work

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_the_next_unit_of_work_after_an_interrupted_statement_works(tracker_env: dict[str, str]) -> None:
    sleep = "SELECT pg_sleep(3)" if tracker_env["TRACKER_DATABASE_URL"].startswith("postgresql") else "SELECT SLEEP(3)"
    with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.3), unit_of_work() as session:
        session.execute(text(sleep))
    for _ in range(3):
        with unit_of_work() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1


# COMMIT made slow on PostgreSQL: a deferred constraint trigger runs at COMMIT and sleeps,
# so the soft limit's signal lands while the driver waits for COMMIT's answer.
SLOW_COMMIT_SETUP = (
    "CREATE TABLE slow_commit (id integer)",
    "CREATE FUNCTION slow_commit_sleep() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
    " LANGUAGE plpgsql",
    "CREATE CONSTRAINT TRIGGER slow_commit_at_commit AFTER INSERT ON slow_commit DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION slow_commit_sleep()",
)


@contextmanager
def slow_commit(database_url: str) -> Iterator[None]:
    """COMMIT takes seconds: on PostgreSQL in the server (the trigger above); on SQLite,
    whose COMMIT is one C call a signal cannot split, in the engine's ``commit`` event,
    the last Python the unit of work runs before the driver's commit."""
    if database_url.startswith("postgresql"):
        with unit_of_work() as session:
            for statement in SLOW_COMMIT_SETUP:
                session.execute(text(statement))
        yield
        return
    with unit_of_work() as session:
        session.execute(text("CREATE TABLE slow_commit (id integer)"))

    def sleep_before_commit(connection: Connection) -> None:
        time.sleep(2)

    engine = get_engine()
    event.listen(engine, "commit", sleep_before_commit)
    try:
        yield
    finally:
        event.remove(engine, "commit", sleep_before_commit)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_soft_limit_during_commit_leaves_no_busy_connection_in_the_pool(tracker_env: dict[str, str]) -> None:
    database_url = tracker_env["TRACKER_DATABASE_URL"]
    with slow_commit(database_url):
        with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.3), unit_of_work() as session:
            session.execute(text("INSERT INTO slow_commit VALUES (1)"))
        # The pool hands out the same connections again: each must be free for new work.
        for _ in range(3):
            with unit_of_work() as session:
                assert session.execute(text("SELECT count(*) FROM slow_commit")).scalar() in (0, 1)
    # And no lock is left behind: another engine writes at once.
    other = create_engine(database_url, connect_args={"timeout": 1} if database_url.startswith("sqlite") else {})
    try:
        with other.begin() as connection:
            connection.execute(text("INSERT INTO slow_commit VALUES (2)"))
    finally:
        other.dispose()
