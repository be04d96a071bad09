"""The dispatcher's Redis-kept state: call budgets, tasks in flight, announced capacity
(real Redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis

from tests.support.skewed_clock import run_python
from tracker.polling.capacity import ANNOUNCEMENT_TTL_SECONDS, Capacity, InFlight, TokenBudgets

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 28, 12, 0, 0)


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(broker_url)
    yield connection
    connection.close()


def test_a_budget_refills_at_the_rate_up_to_one_tick(client: redis.Redis) -> None:
    budgets = TokenBudgets(client, tick_interval=1.0)
    assert budgets.available(7, per_tick=10, now=T0, most=10) == 10
    budgets.spend(7, 10)
    assert TokenBudgets(client, 1.0).available(7, 10, T0, most=10) == 0
    assert TokenBudgets(client, 1.0).available(7, 10, T0 + timedelta(seconds=0.5), most=10) == 5
    # Never more than it may save up, however long nobody asked.
    assert TokenBudgets(client, 1.0).available(7, 10, T0 + timedelta(hours=1), most=10) == 10
    assert TokenBudgets(client, 1.0).available(7, 10, T0 + timedelta(hours=1), most=40) == 40


def test_a_changed_allowance_starts_afresh(client: redis.Redis) -> None:
    budgets = TokenBudgets(client, tick_interval=1.0)
    budgets.available(7, per_tick=10, now=T0, most=10)
    budgets.spend(7, 10)
    # The circuit went half-open: one call, at once.
    probe = TokenBudgets(client, 1.0)
    assert probe.available(7, 1, T0, most=1) == 1
    probe.spend(7, 1)
    # Closed again: a full bucket.
    assert TokenBudgets(client, 1.0).available(7, 10, T0, most=40) == 40


def test_tasks_in_flight_end_with_their_task_or_their_lease(client: redis.Redis) -> None:
    tracked = InFlight(client)
    tracked.started(1, "orders:11", T0 + timedelta(seconds=180))
    tracked.started(1, "orders:12", T0 + timedelta(seconds=10))
    tracked.started(2, "orders:21", T0 + timedelta(seconds=180))
    assert tracked.counts([1, 2, 3], T0) == {1: 2, 2: 1, 3: 0}
    tracked.finished(1, "orders:11")
    assert tracked.counts([1], T0) == {1: 1}
    # A killed task's entry lapses when its lease ends.
    assert tracked.counts([1], T0 + timedelta(seconds=11)) == {1: 0}


def test_capacity_is_what_live_workers_announced(client: redis.Redis) -> None:
    capacity = Capacity(client)
    assert capacity.poll_slots() is None
    capacity.announce("a@host", 2)
    capacity.announce("b@host", 3)
    assert capacity.poll_slots() == 5
    capacity.withdraw("a@host")
    assert capacity.poll_slots() == 3
    # A worker that stopped announcing (killed) no longer counts.
    client.hset("tracker:capacity", "b@host", f"3 {0.0}")
    assert capacity.poll_slots() is None
    assert ANNOUNCEMENT_TTL_SECONDS > 5, "longer than the announcement interval"


SKEW_CHECK = "import time; print(time.time())"


def skewed_python(broker_url: str, offset_seconds: float, statement: str) -> list[str]:
    """Run ``statement`` (with ``capacity`` in scope) in a process whose wall clock is
    ``offset_seconds`` off; its printed lines, the first its own time.time()."""
    code = (
        "import time, redis\n"
        "from tracker.polling.capacity import Capacity\n"
        f"capacity = Capacity(redis.Redis.from_url({broker_url!r}))\n"
        "print(time.time())\n"
        f"{statement}\n"
    )
    lines = run_python(code, offset_seconds).split()
    # The skew is real: a test that cannot fail is worth nothing.
    assert abs(float(lines[0]) - time.time() - offset_seconds) < 10, lines
    return lines[1:]


def test_a_dispatcher_whose_clock_is_ahead_still_counts_live_announcements(
    client: redis.Redis, broker_url: str
) -> None:
    Capacity(client).announce("a@host", 3)
    [seen] = skewed_python(broker_url, 30, "print(capacity.poll_slots())")
    assert seen == "3"
    assert Capacity(client).poll_slots() == 3


def test_an_announcement_from_a_worker_whose_clock_is_behind_counts(client: redis.Redis, broker_url: str) -> None:
    skewed_python(broker_url, -60, "capacity.announce('behind@host', 2)")
    assert Capacity(client).poll_slots() == 2
