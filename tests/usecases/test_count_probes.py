"""The count probe's run and the task's soft time limit, in memory: it starts no probe it
cannot finish before the limit, hands back the orders it did not get to, and writes the
drops it found, also when the limit interrupts it, which it raises again. The probes are
plug-ins as a shop writes them (``TRACKER_COUNT_PROBE``); the limit is a real timer signal."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from tests.support.soft_limit import soft_limit_after
from tests.usecases.helpers import poll_due
from tracker.config import Settings
from tracker.core.time_limits import Deadline
from tracker.db.models import Drop, Order, Service
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway
from tracker.refills.count_probe_plugins import PROBE_TIMEOUT, ProbeTarget
from tracker.refills.count_probes import probe_counts
from tracker.testing import MemoryDatabase, ScriptedPanel, SettableClock

SERVICE = 9
ORDERS = [701, 702, 703, 704]
START_COUNT = 100
QUANTITY = 50
# What each order's target shows once delivered: start count plus quantity.
DELIVERED = START_COUNT + QUANTITY


@pytest.fixture
def completed(db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, provider_id: int) -> None:
    with db.unit_of_work() as session:
        session.add(Service(provider_id=provider_id, service_id=SERVICE, name="Followers", refill=True, updated_at=clock()))
    with db.unit_of_work() as session:
        track_orders(session, "panel", ORDERS, service=SERVICE, quantity=QUANTITY, now=clock())
    for order_id in ORDERS:
        panel.set_order(order_id, "Completed", start_count=START_COUNT)
    poll_due(db, settings, gateway, clock)
    clock.advance(3600)


def sleepy_probe(seconds: float, counts: dict[int, int], asked: list[int]) -> Callable[[ProbeTarget], int | None]:
    def probe(target: ProbeTarget) -> int | None:
        asked.append(target.order_id)
        time.sleep(seconds)
        return counts.get(target.order_id, DELIVERED)

    return probe


def drops(db: MemoryDatabase) -> list[int]:
    with db.unit_of_work(read_only=True) as session:
        return sorted(session.scalars(select(Order.external_id).join(Drop, Drop.order_id == Order.id)))


def never_probed(db: MemoryDatabase) -> list[int]:
    with db.unit_of_work(read_only=True) as session:
        return sorted(session.scalars(select(Order.external_id).where(Order.count_probed_at.is_(None))))


@pytest.mark.usefixtures("completed")
def test_a_soft_limit_mid_probe_keeps_the_drops_found_and_is_raised(
    db: MemoryDatabase, settings: Settings, clock: SettableClock
) -> None:
    """The first order dropped; the limit lands during the second probe. Taken for the
    plug-in's failure, it would let the run probe on until the hard limit kills it, with
    every drop found so far lost."""
    asked: list[int] = []
    with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.5):
        probe_counts(settings, probe=sleepy_probe(0.3, {ORDERS[0]: DELIVERED - 20}, asked), clock=clock, unit_of_work=db.unit_of_work)
    assert asked == ORDERS[:2]
    assert drops(db) == [ORDERS[0]]
    # Not probed, or interrupted: first in line next time.
    assert never_probed(db) == ORDERS[1:]


@pytest.mark.usefixtures("completed")
def test_no_probe_starts_that_could_outlast_the_soft_limit(
    db: MemoryDatabase, settings: Settings, clock: SettableClock
) -> None:
    """A probe may take PROBE_TIMEOUT (13 s), and the run keeps 2 s to write: with 16 s
    left the first starts, with 14 s left after it (a 2 s probe) no other does."""
    asked: list[int] = []
    unit = sum(PROBE_TIMEOUT) + 2
    started = time.monotonic()
    summary = probe_counts(
        settings, probe=sleepy_probe(2.0, {}, asked), clock=clock, deadline=Deadline.after(unit + 1),
        unit_of_work=db.unit_of_work,
    )
    assert time.monotonic() - started < unit
    assert asked == ORDERS[:1]
    assert summary.probed == 1
    assert never_probed(db) == ORDERS[1:]
