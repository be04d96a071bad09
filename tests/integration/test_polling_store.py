"""The poll path against a real database and the sim over HTTP, in process: claims and
leases, applying answers, idempotence, and what a failed call leaves behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.integration.helpers import order_polls, poll_orders, register_sim_orders
from tests.support.processes import wait_until
from tracker.polling.dispatch import PollWork
from tracker.core.clock import utcnow
from tracker.config import get_settings
from tracker.db.claims import claim_due
from tracker.db.models import Order, OrderEvent, Provider
from tracker.db.session import unit_of_work
from tracker.sim.server import SimServer
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[SimServer]:
    # speed ~0: the sim's clock stands still, so every poll gets the same answers.
    with SimServer(dialect="standard", speed=1e-6, seed=7) as server:
        yield server


def register(sim: SimServer, count: int, name: str = "panel", **seed: object) -> list[int]:
    return register_sim_orders(sim, count, name, age_s=400, **seed)


def event_count() -> int:
    with unit_of_work() as session:
        return int(session.scalar(select(func.count()).select_from(OrderEvent)) or 0)


def poll_everything_due(gateway: Gateway) -> int:
    """Claim and poll every due order; returns how many orders were asked about."""
    batches = order_polls(get_settings(), utcnow())
    summaries = [
        poll_orders(batch.provider_id, batch.claim.claim_id, batch.claim.row_ids, settings=get_settings(), gateway=gateway)
        for batch in batches
    ]
    return sum(summary.asked for summary in summaries)


def make_all_due() -> None:
    with unit_of_work() as session:
        session.execute(Order.__table__.update().values(next_poll_at=utcnow() - timedelta(seconds=1)))


def test_the_same_answers_applied_again_add_no_event(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 250, pending_s=10**6)
    assert poll_everything_due(gateway) == 250
    first = event_count()
    assert first == 250
    for _ in range(3):
        make_all_due()
        assert poll_everything_due(gateway) == 250
    assert event_count() == first
    assert sim.stats()["actions"]["status"]["calls"] == 12


def test_one_task_polls_several_calls_worth_and_keeps_answers_before_a_failed_call(
    sim: SimServer, gateway: Gateway
) -> None:
    register(sim, 450, pending_s=10**6)
    batches = order_polls(get_settings(), utcnow())
    assert [len(batch.claim.row_ids) for batch in batches] == [450]
    sim.inject_fault("http_500", actions=["status"], skip=2)
    started = utcnow()
    batch = batches[0]
    summary = poll_orders(batch.provider_id, batch.claim.claim_id, batch.claim.row_ids, settings=get_settings(), gateway=gateway)
    sim.clear_faults()
    # The 5 calls (100, 100, 100, 100 and 50 IDs) run together (the provider has not failed
    # lately): the sim answers the first two to arrive, whichever they are, and fails the
    # others (after the client's own retries).
    with unit_of_work() as session:
        orders = session.scalars(select(Order).order_by(Order.id)).all()
        provider = session.scalars(select(Provider)).one()
    answered_by_call = [
        {order.status is not None for order in orders[offset : offset + 100]} for offset in range(0, 450, 100)
    ]
    # Whole calls' worth: two calls' rows, and nothing of the other three.
    assert sorted(tuple(answered) for answered in answered_by_call) == [(False,)] * 3 + [(True,)] * 2
    answered = sum(1 for order in orders if order.status is not None)
    assert answered in (150, 200)
    assert (summary.asked, summary.applied, summary.error) == (450, answered, "HTTPError")
    assert event_count() == answered
    assert all(order.claim_id is None for order in orders)
    unanswered = [order for order in orders if order.status is None]
    assert len(unanswered) == 450 - answered
    assert all(order.next_poll_at > started for order in unanswered)
    assert provider.consecutive_failures == 1
    make_all_due()
    assert poll_everything_due(gateway) == 450
    assert event_count() == 450


def test_an_unexpected_error_gives_the_orders_back_and_is_raised(sim: SimServer, tracker_env: dict[str, str]) -> None:
    import redis

    from tracker.providers.ratelimit import RateLimiter

    register(sim, 150)
    # A rate limiter whose Redis is down: not a provider failure, but the call cannot go.
    gateway = Gateway(get_settings(), RateLimiter.from_url("redis://127.0.0.1:9/0"))
    batch = order_polls(get_settings(), utcnow())[0]
    started = utcnow()
    with pytest.raises(redis.ConnectionError):
        poll_orders(batch.provider_id, batch.claim.claim_id, batch.claim.row_ids, settings=get_settings(), gateway=gateway)
    gateway.close()
    with unit_of_work() as session:
        orders = session.scalars(select(Order)).all()
        provider = session.scalars(select(Provider)).one()
    assert len(orders) == 150
    assert all(order.claim_id is None and order.status is None for order in orders)
    assert all(order.next_poll_at >= started + timedelta(seconds=get_settings().poll_interval) for order in orders)
    assert provider.consecutive_failures == 0
    assert "status" not in sim.stats()["actions"]


def test_a_tick_claims_in_rounds_and_never_beyond_the_allowance(sim: SimServer, gateway: Gateway) -> None:
    from tracker.polling.dispatch import TASKS_PER_ROUND, claim_rounds

    per_task = get_settings().calls_per_poll_task
    assert (per_task, TASKS_PER_ROUND) == (10, 10)
    register(sim, 11_300, pending_s=10**6)
    with unit_of_work() as session:
        # The test tick is 1 s: 115 req/s less the limiter's 10% margin is 105 calls per tick.
        session.scalars(select(Provider)).one().rate_limit = 115
    first_tick = [[len(piece.claim.row_ids) for piece in work if isinstance(piece, PollWork)] for work in claim_rounds(get_settings(), utcnow())]
    assert first_tick == [[1000] * 10, [500]]
    second_tick = [[len(piece.claim.row_ids) for piece in work if isinstance(piece, PollWork)] for work in claim_rounds(get_settings(), utcnow())]
    assert second_tick == [[800]]


def test_a_claim_is_exclusive_until_its_lease_runs_out(sim: SimServer, tracker_env: dict[str, str]) -> None:
    register(sim, 150)
    now = utcnow()
    lease_until = now + timedelta(seconds=30)
    with unit_of_work() as session:
        provider_id = session.scalar(select(Provider.id))
        assert provider_id is not None
        first = claim_due(session, Order, provider_id=provider_id, now=now, lease_until=lease_until, batch_size=100, max_batches=5)
    with unit_of_work() as session:
        again = claim_due(session, Order, provider_id=provider_id, now=now, lease_until=lease_until, batch_size=100, max_batches=5)
    assert [len(claim.row_ids) for claim in first] == [100, 50]
    assert again == []
    with unit_of_work() as session:
        after_lease = claim_due(
            session, Order, provider_id=provider_id, now=lease_until, lease_until=lease_until + timedelta(seconds=30),
            batch_size=100, max_batches=5,
        )
    assert sorted(row for claim in after_lease for row in claim.row_ids) == sorted(row for claim in first for row in claim.row_ids)


def test_rows_in_flight_are_never_filler_even_when_the_fill_horizon_reaches_past_the_lease(
    sim: SimServer, tracker_env: dict[str, str]
) -> None:
    register(sim, 150)
    now = utcnow()
    # A long poll interval makes a wide fill horizon: wider than the lease here.
    lease_until = now + timedelta(seconds=10)
    horizon = timedelta(seconds=60)
    with unit_of_work() as session:
        provider_id = session.scalar(select(Provider.id))
        assert provider_id is not None
        first = claim_due(session, Order, provider_id=provider_id, now=now, lease_until=lease_until,
                          batch_size=100, max_batches=1, fill_horizon=horizon)
    with unit_of_work() as session:
        second = claim_due(session, Order, provider_id=provider_id, now=now, lease_until=lease_until,
                           batch_size=100, max_batches=1, fill_horizon=horizon)
    assert [len(claim.row_ids) for claim in first + second] == [100, 50]
    assert not set(first[0].row_ids) & set(second[0].row_ids)


def test_concurrent_dispatchers_never_claim_the_same_order(sim: SimServer, tracker_env: dict[str, str]) -> None:
    register(sim, 2000)
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def dispatcher() -> None:
        barrier.wait()
        batches = order_polls(get_settings(), utcnow())
        claimed.append([row for batch in batches for row in batch.claim.row_ids])

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [row for rows in claimed for row in rows]
    assert len(every) == len(set(every))
    assert len(every) == 2000


def test_a_task_delivered_after_its_lease_was_reclaimed_does_nothing(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 100)
    stale = order_polls(get_settings(), utcnow())[0]
    # The lease runs out (say the broker lost the message) and a later tick re-claims.
    fresh = order_polls(get_settings(), utcnow() + timedelta(seconds=get_settings().lease_seconds + 1))[0]
    summary = poll_orders(stale.provider_id, stale.claim.claim_id, stale.claim.row_ids, settings=get_settings(), gateway=gateway)
    assert summary.asked == 0
    assert "status" not in sim.stats()["actions"]
    poll_orders(fresh.provider_id, fresh.claim.claim_id, fresh.claim.row_ids, settings=get_settings(), gateway=gateway)
    assert event_count() == 100


def test_a_failed_call_changes_no_data_and_backs_off(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 100, pending_s=10**6)
    poll_everything_due(gateway)
    before = event_count()
    with unit_of_work() as session:
        snapshot = {row.id: (row.status, row.remains, row.event_count) for row in session.scalars(select(Order))}
    for kind in ("http_500", "html", "broken_json", "drop_connection"):
        sim.inject_fault(kind, count=10)
        make_all_due()
        started = utcnow()
        poll_everything_due(gateway)
        sim.clear_faults()
        with unit_of_work() as session:
            orders = session.scalars(select(Order)).all()
            provider = session.scalars(select(Provider)).one()
            assert {row.id: (row.status, row.remains, row.event_count) for row in orders} == snapshot, kind
            assert all(row.next_poll_at > started and row.claim_id is None for row in orders), kind
            assert provider.consecutive_failures >= 1, kind
    assert event_count() == before


def test_an_invalid_key_pauses_the_provider_without_retrying(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 100)
    sim.set_config(api_key="a-different-key")
    poll_everything_due(gateway)
    with unit_of_work() as session:
        provider = session.scalars(select(Provider)).one()
        assert provider.paused
        assert "API key" in (provider.paused_reason or "")
    make_all_due()
    assert poll_everything_due(gateway) == 0
    assert sim.stats()["actions"]["status"]["calls"] == 1


def test_orders_reported_missing_end_not_found_after_k_answers(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 5)
    with unit_of_work() as session:
        track_orders(session, "panel", [999_999], now=utcnow())
    k = get_settings().not_found_after
    for attempt in range(1, k + 1):
        make_all_due()
        poll_everything_due(gateway)
        with unit_of_work() as session:
            ghost = session.scalars(select(Order).where(Order.external_id == 999_999)).one()
        assert ghost.final is (attempt == k)
    assert ghost.status == "Not found"


def test_a_task_that_starts_after_its_lease_ran_out_calls_nothing(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 100)
    [work] = order_polls(get_settings(), utcnow())
    with unit_of_work() as session:
        # The task waited in the queue past its lease; nobody has claimed the rows again yet.
        session.execute(Order.__table__.update().values(next_poll_at=utcnow() - timedelta(seconds=1)))
    summary = poll_orders(work.provider_id, work.claim.claim_id, work.claim.row_ids, settings=get_settings(), gateway=gateway)
    assert summary.applied == 0
    assert "status" not in sim.stats()["actions"]
    with unit_of_work() as session:
        assert all(order.claim_id is None for order in session.scalars(select(Order)))


def test_after_a_failed_call_the_next_task_asks_once_before_the_rest(sim: SimServer, gateway: Gateway) -> None:
    register(sim, 500, pending_s=10**6)
    with unit_of_work() as session:
        session.execute(Provider.__table__.update().values(consecutive_failures=1))
    [batch] = order_polls(get_settings(), utcnow())
    sim.inject_fault("hold", count=1, actions=["status"])
    polling = threading.Thread(
        target=poll_orders,
        args=(batch.provider_id, batch.claim.claim_id, batch.claim.row_ids),
        kwargs={"settings": get_settings(), "gateway": gateway},
    )
    polling.start()
    try:
        wait_until(lambda: sim.stats()["held_now"] == 1, timeout=10, what="the first call held")
        # Slow start: while the first call is out, the other four wait for its answer.
        for _ in range(10):
            assert sim.stats()["actions"]["status"]["calls"] == 1
            time.sleep(0.05)
    finally:
        sim.release_held()
        polling.join(timeout=30)
    assert sim.stats()["actions"]["status"]["calls"] == 5
    assert event_count() == 500
