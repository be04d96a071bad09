"""Task time limits under the worker's default (prefork) pool: real worker, beat, Redis,
the simulated provider over HTTP, and SQLite or PostgreSQL.

A poll task makes no call that could outlast its soft limit, retries included: a call
the panel holds ends at its timeout, before the limit, and counts against the provider;
the task writes what it has and gives its rows back with the failure back-off. (A call
that outlasts every timeout, which the sim cannot make, is abandoned at the soft limit
and counted the same way: tests/usecases/test_time_limits.py.) A task stuck on a
database lock ends too: at the soft limit where the driver waits in Python (psycopg), at
the hard limit where it waits in C and the soft limit's signal cannot get in (SQLite's
busy wait): the pool kills that child and starts another. Either way its rows come back
with the lease.
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

SOFT_LIMIT = 4
HARD_LIMIT = 7
# One try of a call takes at most 1.5 s: with the 2 s kept to write, it fits in the soft
# limit (the settings refuse a limit with no room for one call).
READ_TIMEOUT = 1.0
HTTP = {"TRACKER_HTTP_CONNECT_TIMEOUT": "0.5", "TRACKER_HTTP_READ_TIMEOUT": str(READ_TIMEOUT), "TRACKER_HTTP_DEADLINE": "1.5"}


def limits(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"TRACKER_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT), "TRACKER_TASK_TIME_LIMIT": str(HARD_LIMIT), **HTTP}
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
def test_a_held_call_ends_before_the_soft_limit_and_counts_against_the_provider(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = limits(tracker_env, monkeypatch)
    with SimServer(dialect="standard", seed=41) as sim, Cluster(env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=100, service=1, pending_s=10**6)
        # Held far past the read timeout and the soft limit.
        sim.inject_fault("hold", count=1, actions=["status"], seconds=25)
        worker = cluster.worker()
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
        wait_until(lambda: sim.stats()["held_now"] > 0, timeout=30, what="the held status call")
        wait_until(
            lambda: "provider call failed: status:" in worker.output(), timeout=SOFT_LIMIT + 5, what="the timeout recorded"
        )
        # The read timeout, not the soft limit, ended the call: it counted for the circuit
        # (its first failure), and the retry that would not have fitted was not made.
        assert sim.stats()["held_now"] == 1
        assert "SoftTimeLimitExceeded" not in worker.output()
        assert re.search(r"provider call failed: status: .*Read timed out", worker.output())
        wait_until(lambda: polled() == 100, timeout=30, what="every order polled after the failure back-off")
        sim.release_held()
        assert not re.search(r"time limit \(\S+\) exceeded", worker.output())
        assert worker.alive()
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
