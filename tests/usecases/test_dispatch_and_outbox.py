"""The dispatcher's per-provider call budget, and the outbox's delivery to a stub sink."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.usecases.helpers import poll_due, track
from tracker.config import Settings
from tracker.core.time_limits import Deadline
from tracker.db.models import Provider
from tracker.core.outbox_events import provider_alert
from tracker.outbox.delivery import (
    DELIVERIES_IN_FLIGHT,
    DELIVERY_BATCH,
    Sinks,
    claim_due_events,
    deliver_claimed,
    delivery_lease,
    record_events,
)
from tracker.polling.dispatch import LARGEST_TASK_CALLS, PollWork, claim_all, tick_budget
from tracker.providers.gateway import Gateway
from tracker.testing import InMemoryBudgets, MemoryDatabase, ScriptedPanel, SettableClock

# Small batches: the same budget arithmetic on fewer rows.
BATCH = 10


def calls_claimed(db: MemoryDatabase, settings: Settings, clock: SettableClock, budgets: InMemoryBudgets) -> int:
    work = claim_all(settings, clock(), budgets=budgets, unit_of_work=db.unit_of_work)
    return sum(-(-len(piece.claim.row_ids) // BATCH) for piece in work if isinstance(piece, PollWork))


def test_the_dispatcher_hands_out_no_more_calls_than_the_budget_holds(
    db: MemoryDatabase, settings: Settings, clock: SettableClock, provider_id: int
) -> None:
    with db.unit_of_work() as session:
        provider = session.get_one(Provider, provider_id)
        provider.rate_limit = 0.5
        provider.batch_size = BATCH
        per_tick = tick_budget(provider, settings, clock())
    # A full bucket (a new provider's) holds one largest task's calls.
    saved_up = max(LARGEST_TASK_CALLS, per_tick)
    # Far more due work than a few ticks may hand out.
    track(db, clock, range(1, (saved_up + 5 * per_tick) * BATCH + 1))
    budgets = InMemoryBudgets(settings.tick_interval)

    first = calls_claimed(db, settings, clock, budgets)
    assert first == saved_up
    assert budgets.spent == [(provider_id, first)]
    # The same instant again: the bucket is empty, whatever is still due.
    assert calls_claimed(db, settings, clock, budgets) == 0
    # One tick later: one tick's worth.
    clock.advance(settings.tick_interval)
    assert calls_claimed(db, settings, clock, budgets) == per_tick
    assert sum(calls for _, calls in budgets.spent) == first + per_tick


class RecordingSink:
    """The shop's own task as the sink (TRACKER_EVENT_TASK): what a ``send_task`` got."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.failing = False

    def __call__(self, name: str, args: list[Any], queue: str) -> None:
        if self.failing:
            raise ConnectionError("the shop's broker is down")
        assert name == "shop.order_events" and queue == "tracker-events"
        self.sent.extend(args)


@pytest.fixture
def shop_settings(settings: Settings) -> Settings:
    return replace(settings, event_task="shop.order_events")


def deliver_due(db: MemoryDatabase, settings: Settings, sink: RecordingSink, clock: SettableClock) -> tuple[int, int]:
    delivered = retrying = 0
    for claim in claim_due_events(settings, clock(), unit_of_work=db.unit_of_work):
        summary = deliver_claimed(
            claim.claim_id, claim.row_ids, Sinks(settings, sink), clock, unit_of_work=db.unit_of_work
        )
        delivered += summary.delivered
        retrying += summary.retrying
    return delivered, retrying


def test_recorded_transitions_reach_the_shop_once_in_order_after_a_failed_delivery(
    db: MemoryDatabase, shop_settings: Settings, panel: ScriptedPanel, clock: SettableClock,
    limiter: Any, metrics: Any, provider_id: int,
) -> None:
    gateway = Gateway(shop_settings, limiter, metrics, transport=panel)
    track(db, clock, [11, 12])
    for status in ("In progress", "Completed"):
        for order_id in (11, 12):
            panel.set_order(order_id, status, start_count=5)
        poll_due(db, shop_settings, gateway, clock)
        clock.advance(shop_settings.poll_interval * shop_settings.max_poll_backoff_factor * 2)

    sink = RecordingSink()
    sink.failing = True
    assert deliver_due(db, shop_settings, sink, clock) == (0, 2)
    assert sink.sent == []
    sink.failing = False
    clock.advance(3600)
    # Retried: each order's first event, then (its earlier one delivered) the second.
    delivered = 0
    for _ in range(3):
        delivered += deliver_due(db, shop_settings, sink, clock)[0]
        clock.advance(60)
    assert delivered == 4
    assert deliver_due(db, shop_settings, sink, clock) == (0, 0)
    by_order: dict[int, list[str]] = {}
    for event in sink.sent:
        by_order.setdefault(event["order_id"], []).append(event["to_status"])
    assert by_order == {11: ["In progress", "Completed"], 12: ["In progress", "Completed"]}


def test_the_dispatcher_starts_no_round_it_cannot_finish_before_its_soft_limit(
    db: MemoryDatabase, settings: Settings, clock: SettableClock, provider_id: int
) -> None:
    """Each round is a transaction, then its tasks are enqueued: with less than the 2 s
    kept for that left, no round starts, and the due rows stay due for the next run."""
    track(db, clock, [1, 2, 3])
    assert claim_all(settings, clock(), deadline=Deadline.after(1.5), unit_of_work=db.unit_of_work) == []
    [piece] = claim_all(settings, clock(), deadline=Deadline.after(60), unit_of_work=db.unit_of_work)
    assert isinstance(piece, PollWork) and len(piece.claim.row_ids) == 3


def _record_backlog(db: MemoryDatabase, settings: Settings, clock: SettableClock, count: int) -> None:
    with db.unit_of_work() as session:
        record_events(session, settings, [
            provider_alert(provider_id=None, provider_name="panel", kind="provider.balance_low", message=f"#{number}", at=clock())
            for number in range(count)
        ])


def test_a_backlog_of_events_never_has_more_delivery_tasks_out_than_the_cap(
    db: MemoryDatabase, shop_settings: Settings, clock: SettableClock
) -> None:
    # Delivery tasks travel on the `celery` queue, which every worker reads before the
    # polls' queue: a tick that hands out batches while earlier ones are still queued or
    # running piles them up there, and the poll tasks wait behind them past their leases.
    _record_backlog(db, shop_settings, clock, 30 * DELIVERY_BATCH)
    first = claim_due_events(shop_settings, clock(), unit_of_work=db.unit_of_work)
    assert len(first) == DELIVERIES_IN_FLIGHT
    # Ticks go on while those are still out: nothing more is handed out.
    for _ in range(3):
        clock.advance(shop_settings.tick_interval)
        assert claim_due_events(shop_settings, clock(), unit_of_work=db.unit_of_work) == []
    # One ends: one takes its place.
    done = first[0]
    assert deliver_claimed(done.claim_id, done.row_ids, Sinks(shop_settings, RecordingSink()), clock,
                           unit_of_work=db.unit_of_work).delivered == DELIVERY_BATCH
    assert len(claim_due_events(shop_settings, clock(), unit_of_work=db.unit_of_work)) == 1
    # A delivery task that never ran (its worker killed) holds its place only for its lease.
    clock.advance(delivery_lease(shop_settings) + 1)
    assert len(claim_due_events(shop_settings, clock(), unit_of_work=db.unit_of_work)) == DELIVERIES_IN_FLIGHT


class RefusingFirstSink(RecordingSink):
    """The shop refuses its order's first event (an "In progress"), and takes the rest."""

    def __call__(self, name: str, args: list[Any], queue: str) -> None:
        if args[0].get("to_status") == "In progress":
            raise ConnectionError("the shop refused it")
        super().__call__(name, args, queue)


def test_an_event_that_failed_for_good_holds_back_nothing_after_it(
    db: MemoryDatabase, shop_settings: Settings, clock: SettableClock, limiter: Any, metrics: Any, panel: ScriptedPanel,
    provider_id: int,
) -> None:
    """Order is kept while an earlier event may still arrive; one that failed for good
    never will, so its order's later events go out in the same batch."""
    settings = replace(shop_settings, webhook_max_attempts=1)
    gateway = Gateway(settings, limiter, metrics, transport=panel)
    track(db, clock, [21])
    for status in ("In progress", "Completed"):
        panel.set_order(21, status, start_count=5)
        poll_due(db, settings, gateway, clock)
        clock.advance(settings.poll_interval * settings.max_poll_backoff_factor * 2)
    sink = RefusingFirstSink()
    assert deliver_due(db, settings, sink, clock) == (1, 0)
    assert [event["to_status"] for event in sink.sent] == ["Completed"]
