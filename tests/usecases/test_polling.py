"""A status poll batch, end to end in memory: claim, call the panel, apply the answers."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from tests.usecases.helpers import API_KEY, poll_due, track
from tracker.config import Settings
from tracker.db.models import Order, OrderEvent
from tracker.providers.gateway import Gateway
from tracker.testing import (
    InMemoryCallMetrics,
    InMemoryRateLimiter,
    MemoryDatabase,
    ScriptedPanel,
    SettableClock,
    broken_json,
    call_ids,
    html_page,
    too_many_requests,
)

ORDER_IDS = [101, 102, 103]


def statuses(db: MemoryDatabase) -> dict[int, str | None]:
    with db.unit_of_work(read_only=True) as session:
        return dict(session.execute(select(Order.external_id, Order.status)).all())


def recorded_statuses(db: MemoryDatabase) -> list[tuple[int, str]]:
    with db.unit_of_work(read_only=True) as session:
        rows = session.execute(
            select(Order.external_id, OrderEvent.to_status)
            .join(OrderEvent, OrderEvent.order_id == Order.id)
            .order_by(Order.external_id, OrderEvent.seq)
        ).all()
        return [(external_id, status) for external_id, status in rows]


def answer_all(panel: ScriptedPanel, status: str, remains: int) -> None:
    for order_id in ORDER_IDS:
        panel.set_order(order_id, status, remains=remains, start_count=40)


def test_each_transition_is_recorded_once_however_often_the_same_answer_comes(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int, limiter: InMemoryRateLimiter, metrics: InMemoryCallMetrics,
) -> None:
    track(db, clock, ORDER_IDS)
    for status, remains in (("Pending", 100), ("In progress", 60), ("Completed", 0)):
        answer_all(panel, status, remains)
        for _ in range(3):
            poll_due(db, settings, gateway, clock)
            # Past any back-off: every order is due again.
            clock.advance(settings.poll_interval * settings.max_poll_backoff_factor * 2)
        assert set(statuses(db).values()) == {status}

    expected = [(order_id, status) for order_id in ORDER_IDS for status in ("Pending", "In progress", "Completed")]
    assert recorded_statuses(db) == expected
    # Completed orders are final: the last two sweeps of "Completed" asked nothing.
    status_calls = panel.actions().count("status")
    assert status_calls == 7
    assert Counter(call_ids(panel.calls, "status")) == {str(order_id): status_calls for order_id in ORDER_IDS}
    assert limiter.calls_to(provider_id) == status_calls
    assert [call.error for call in metrics.of(provider_id)] == [None] * status_calls
    assert all(call.key_matched for call in panel.calls)
    assert API_KEY not in repr(panel.calls)


def test_a_panel_answering_html_429_or_broken_json_changes_nothing(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int, limiter: InMemoryRateLimiter, metrics: InMemoryCallMetrics,
) -> None:
    track(db, clock, ORDER_IDS)
    answer_all(panel, "In progress", 60)
    failures = [html_page(), too_many_requests(retry_after=45), broken_json()]
    for failure in failures:
        panel.script(failure)
        [summary] = poll_due(db, settings, gateway, clock)
        assert summary.applied == 0 and summary.transitions == 0 and summary.error is not None
        with db.unit_of_work(read_only=True) as session:
            rows = session.execute(select(Order.status, Order.claim_id, Order.next_poll_at)).all()
            # Given back: unclaimed, untouched, due again only after a back-off.
            assert all(row.status is None and row.claim_id is None for row in rows)
            assert all(row.next_poll_at.replace(tzinfo=clock().tzinfo) > clock() for row in rows)
            assert session.scalar(select(func.count()).select_from(OrderEvent)) == 0
        clock.advance(settings.poll_interval * 100)
    errors = [call.error for call in metrics.of(provider_id)]
    assert errors == ["NotJSON", "RateLimited", "NotJSON"]
    assert limiter.cool_downs[provider_id] >= 45

    # The panel recovers: the next poll records the one transition.
    poll_due(db, settings, gateway, clock)
    assert set(statuses(db).values()) == {"In progress"}
    assert [status for _, status in recorded_statuses(db)] == ["In progress"] * len(ORDER_IDS)
