"""Task time limits fire under the worker's default (prefork) pool: real worker, beat,
Redis, the simulated provider over HTTP, and SQLite or PostgreSQL.

Soft limit: a call the panel holds past it is abandoned; the task writes what it has,
gives its rows back and ends, and the pool child lives on. A task stuck on a database
lock ends too: at the soft limit where the driver waits in Python (psycopg), at the hard
limit where it waits in C and the soft limit's signal cannot get in (SQLite's busy wait):
the pool kills that child and starts another. Either way its rows come back with the
lease.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from tests.integration.helpers import add_provider, shop_client
from tests.support.cluster import Cluster
from tests.support.integrity import event_problems, first_problems
from tests.support.processes import wait_until
from tracker.db.models import Order
from tracker.db.session import unit_of_work
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

SOFT_LIMIT = 3
HARD_LIMIT = 6


def limits(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"TRACKER_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT), "TRACKER_TASK_TIME_LIMIT": str(HARD_LIMIT)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**env, **values}


def claimed() -> int:
    with unit_of_work() as session:
        return int(session.scalar(select(func.count()).select_from(Order).where(Order.claim_id.is_not(None))) or 0)


def polled() -> int:
    with unit_of_work() as session:
        query = select(func.count()).select_from(Order).where(Order.last_observed_at.is_not(None))
        return int(session.scalar(query) or 0)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_soft_limit_abandons_a_held_call_and_gives_the_rows_back(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = limits(tracker_env, monkeypatch)
    with SimServer(dialect="standard", seed=41) as sim, Cluster(env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=100, service=1, pending_s=10**6)
        # Held for longer than the soft limit, and less than the read timeout (30 s).
        sim.inject_fault("hold", count=1, actions=["status"], seconds=25)
        worker = cluster.worker()
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
        wait_until(lambda: sim.stats()["held_now"] > 0, timeout=30, what="the held status call")
        wait_until(
            lambda: "SoftTimeLimitExceeded" in worker.output(), timeout=SOFT_LIMIT + 10, what="the soft time limit"
        )
        # The call is still held at the panel: the limit, not the answer, ended the task,
        # and the task gave its rows back on its way out.
        assert sim.stats()["held_now"] == 1
        wait_until(lambda: claimed() == 0, timeout=5, what="the rows given back")
        assert "Hard time limit" not in worker.output()
        sim.release_held()
        wait_until(lambda: polled() == 100, timeout=30, what="every order polled after the panel answers")
        problems = event_problems("panel")
        assert not problems, first_problems(problems)


STUCK_TASK_ENDED_BY = {
    "sqlite": r"Hard time limit \(\S+\) exceeded for tracker\.poll_status_batch",
    "postgresql": r"Soft time limit \(\S+\) exceeded for tracker\.poll_status_batch",
}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_task_stuck_on_a_database_lock_is_ended_by_its_time_limit(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = limits(tracker_env, monkeypatch)
    database_url = env["TRACKER_DATABASE_URL"]
    with SimServer(dialect="standard", seed=42) as sim, Cluster(env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=100, service=1, pending_s=10**6)
        sim.inject_fault("hold", count=1, actions=["status"])
        worker = cluster.worker()
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
        wait_until(lambda: sim.stats()["held_now"] > 0, timeout=30, what="the held status call")
        # While the call is held, lock what the task will write, then let the panel answer:
        # the task's write waits on the lock inside the database driver.
        blocker = create_engine(database_url, connect_args={"timeout": 60} if database_url.startswith("sqlite") else {})
        connection = blocker.connect()
        try:
            if database_url.startswith("sqlite"):
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(text("BEGIN"))
                connection.execute(text("SELECT id FROM orders FOR UPDATE"))
            sim.release_held()
            ended_by = STUCK_TASK_ENDED_BY[database_url.split(":")[0].split("+")[0]]
            wait_until(
                lambda: re.search(ended_by, worker.output()) is not None,
                timeout=HARD_LIMIT + 15,
                what=ended_by,
            )
        finally:
            connection.rollback()
            connection.close()
            blocker.dispose()
        # The pool child lives on or was replaced; the rows come back when their lease ends.
        wait_until(lambda: polled() == 100, timeout=60, what="every order polled after the kill")
        assert worker.alive()
        problems = event_problems("panel")
        assert not problems, first_problems(problems)
