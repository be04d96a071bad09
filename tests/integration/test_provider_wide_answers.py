"""Answers that say something about the provider, not about each order; and one clock.

- A panel that answers "Incorrect order ID" for nearly every order it answered before
  (maintenance, a restored database, another account's key) is failing: the orders stay
  active, the provider's circuit counts it, and nothing ends as Not found.
- `tracker reopen` puts orders that ended Not found back into polling.
- A worker whose wall clock runs ahead does not freeze the orders it polled: answers are
  ordered by the database's clock.

In process against the sim over HTTP and the real database (both backends), one poll at
a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo

import pytest
from sqlalchemy import select, update

from tests.integration.helpers import order_polls, poll_orders, register_sim_orders
import tracker.core.clock
from tracker.cli.main import main as tracker_cli
from tracker.core.clock import utcnow
from tracker.config import get_settings
from tracker.db.models import Order, OrderEvent, Provider
from tracker.db.session import unit_of_work
from tracker.sim.server import SimServer
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[SimServer]:
    # speed ~0: the sim's clock moves only when the test advances it.
    with SimServer(dialect="standard", speed=1e-6, seed=11) as server:
        yield server


def poll_all_due(gateway: Gateway) -> None:
    for work in order_polls(get_settings(), utcnow()):
        poll_orders(work.provider_id, work.claim.claim_id, work.claim.row_ids, settings=get_settings(), gateway=gateway)


def make_all_due() -> None:
    with unit_of_work() as session:
        session.execute(update(Order).values(next_poll_at=utcnow() - timedelta(seconds=1)))


def _event_count() -> int:
    with unit_of_work() as session:
        return len(session.scalars(select(OrderEvent.id)).all())


def statuses() -> list[str | None]:
    with unit_of_work() as session:
        return list(session.scalars(select(Order.status).order_by(Order.id)))


def test_a_provider_that_forgets_every_order_is_failing_not_each_order(sim: SimServer, gateway: Gateway) -> None:
    register_sim_orders(sim, 40, pending_s=10**6)
    poll_all_due(gateway)
    assert statuses() == ["Pending"] * 40
    # The panel's database is restored from an old backup: it knows none of them.
    sim.reset()
    for _ in range(get_settings().not_found_after + 2):
        make_all_due()
        poll_all_due(gateway)
    assert statuses() == ["Pending"] * 40
    with unit_of_work() as session:
        assert all(not order.final and order.consecutive_not_found == 0 for order in session.scalars(select(Order)))
        provider = session.scalars(select(Provider)).one()
        assert provider.consecutive_failures >= 1


def test_orders_the_provider_never_knew_still_end_not_found(sim: SimServer, gateway: Gateway) -> None:
    register_sim_orders(sim, 10, pending_s=10**6)
    with unit_of_work() as session:
        # Typos by the shop: IDs the panel never had, never answered for.
        track_orders(session, "panel", [900001, 900002, 900003], now=utcnow())
    for _ in range(get_settings().not_found_after):
        make_all_due()
        poll_all_due(gateway)
    assert statuses().count("Not found") == 3 and statuses().count("Pending") == 10


def test_reopen_puts_not_found_orders_back_into_polling(
    sim: SimServer, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = register_sim_orders(sim, 5, pending_s=10**6)
    poll_all_due(gateway)
    with unit_of_work() as session:
        # As the old tracker left them after a provider-wide "Incorrect order ID": ended
        # Not found, with that transition recorded.
        for order in session.scalars(select(Order)):
            order.event_count += 1
            session.add(OrderEvent(order_id=order.id, seq=order.event_count, at=utcnow(), from_status=order.status,
                                   to_status="Not found", raw_status=order.raw_status))
            order.status, order.final, order.consecutive_not_found = "Not found", True, 5
    assert tracker_cli(["reopen", "panel", str(ids[0])]) == 0
    assert "1 order" in capsys.readouterr().out
    assert tracker_cli(["reopen", "panel", "--status", "Not found"]) == 0
    assert "4 orders" in capsys.readouterr().out
    assert tracker_cli(["reopen", "panel", "--status", "Completed"]) == 2
    assert "Not found" in capsys.readouterr().err
    # Back to the status each had before it ended Not found; the same answer again adds nothing.
    assert statuses() == ["Pending"] * 5
    events_before = _event_count()
    poll_all_due(gateway)
    assert statuses() == ["Pending"] * 5 and _event_count() == events_before
    with unit_of_work() as session:
        assert all(not order.final for order in session.scalars(select(Order)))


class _HourAhead(datetime):
    """The wall clock of a worker whose clock runs an hour ahead."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _HourAhead:  # type: ignore[override]
        return cls.fromtimestamp(time.time() + 3600, tz)


def test_a_worker_whose_clock_runs_ahead_freezes_nothing(
    sim: SimServer, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = register_sim_orders(sim, 20, pending_s=60, progress_s=10**6)
    with monkeypatch.context() as skewed:
        skewed.setattr(tracker.core.clock, "datetime", _HourAhead)
        poll_all_due(gateway)
    assert statuses() == ["Pending"] * 20
    sim.advance(120)
    make_all_due()
    poll_all_due(gateway)
    truth = sim.truth(ids)
    expected = [truth[order_id]["status"] for order_id in sorted(ids)]  # type: ignore[index]
    assert "In progress" in expected
    assert statuses() == expected


def test_a_reopened_order_is_not_ended_again_by_one_not_found_answer(sim: SimServer, gateway: Gateway) -> None:
    ids = register_sim_orders(sim, 3, pending_s=10**6)
    poll_all_due(gateway)
    for _ in range(get_settings().not_found_after):
        # Too few orders for a provider-wide verdict: each answer counts for its order.
        sim.reset()
        make_all_due()
        poll_all_due(gateway)
    assert statuses() == ["Not found"] * 3
    assert tracker_cli(["reopen", "panel", *map(str, ids)]) == 0
    with unit_of_work() as session:
        assert [order.status for order in session.scalars(select(Order))] == ["Pending"] * 3
    # One more "Incorrect order ID" is one miss, not the end of the order.
    poll_all_due(gateway)
    with unit_of_work() as session:
        orders = session.scalars(select(Order)).all()
        assert all(not order.final and order.consecutive_not_found == 1 for order in orders)
