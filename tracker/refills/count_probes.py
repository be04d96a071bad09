"""Running the count probe: read eligible orders' counts and record the drops it finds.

Each run takes up to ``PROBE_BATCH`` refill-eligible orders with no refill in flight (for
which a drop would be the same drop, ``tracker.core.refills.drop_verdict``), least
recently probed first, in three steps: a transaction to pick them (and stamp
``count_probed_at``), the probe calls with no transaction open, and a transaction that
records each drop found (``source='probe'``) as a shop's report would be, opening a
refill request due at once or when the cool-down ends. A count below ``start_count``
plus what the order delivered is a drop.

A run starts a probe only while one (``PROBE_TIMEOUT``, or the longest seen in this run
if longer) can still end before the task's soft time limit; the orders it did not get to
are handed back (first in line next run). Whatever it found is written, also when the
soft limit interrupts it, and the limit is then raised again: a plug-in's failure is
logged and skipped, the soft limit never.

What the order delivered is ``quantity - remains``. API v2 does not report the quantity:
the tracker uses ``orders.quantity`` when known, else the largest ``remains`` the order
ever reported, which is its quantity when it was seen before delivery started and a lower
bound otherwise. A lower bound can only hide a drop, never invent one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline, deadline_or_after, interruptions
from tracker.db.clock import database_clock
from tracker.db.models import Order, Provider
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.core.refills import expected_count, window_days
from tracker.refills.count_probe_plugins import PROBE_TIMEOUT, CountProbe, ProbeTarget, load_count_probe
from tracker.refills.drops import (
    completed_orders,
    eligibility_of,
    max_remains_seen,
    orders_with_refill_in_flight,
    record_drop,
    refill_services,
    terms_of,
)

log = logging.getLogger("tracker.probe")

PROBE_BATCH = 100


@dataclass(frozen=True, slots=True)
class ProbeSummary:
    probed: int = 0
    drops: int = 0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class _Planned:
    order_row_id: int
    target: ProbeTarget
    expected: int
    # The order's count_probed_at before this run stamped it: put back if not probed.
    probed_before: datetime | None


def probe_counts(
    settings: Settings,
    *,
    probe: CountProbe | None = None,
    clock: Callable[[], datetime] | None = None,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> ProbeSummary:
    """``clock``: by default the database's. ``deadline``: the task's soft time limit (by
    default TRACKER_TASK_SOFT_TIME_LIMIT from now)."""
    if probe is None:
        if settings.count_probe is None:
            return ProbeSummary()
        probe = load_count_probe(settings.count_probe)
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    if clock is None:
        with unit_of_work(read_only=True) as session:
            clock = database_clock(session)
    planned = _plan(clock(), settings, unit_of_work)
    drops: list[tuple[_Planned, int]] = []
    probed = 0
    longest = sum(PROBE_TIMEOUT)
    try:
        for entry in planned:
            if not deadline.allows(longest + WRITE_MARGIN_SECONDS):
                break
            started = time.monotonic()
            count = _probe_one(probe, entry)
            longest = max(longest, time.monotonic() - started)
            probed += 1
            if count is not None and count < entry.expected:
                drops.append((entry, count))
    finally:
        # Also on the way out of an interruption: what was found is written (the limit
        # leaves time for that), and the orders not probed go back to the front.
        requests = _record(settings, drops, planned[probed:], clock(), unit_of_work)
    return ProbeSummary(probed, len(drops), requests)


def _probe_one(probe: CountProbe, entry: _Planned) -> int | None:
    try:
        return probe(entry.target)
    except interruptions():
        raise
    except Exception as error:  # noqa: BLE001 - a plug-in's failure must not stop the run
        log.warning(
            "count probe failed for order %s: %s: %s",
            entry.target.order_id,
            type(error).__name__,
            str(error)[:200],
            extra={"provider": entry.target.provider},
        )
        return None


def _record(
    settings: Settings,
    drops: Sequence[tuple[_Planned, int]],
    not_probed: Sequence[_Planned],
    now: datetime,
    unit_of_work: UnitOfWork,
) -> int:
    """Record the drops found and hand back the orders not probed; how many refill
    requests were opened."""
    if not drops and not not_probed:
        return 0
    requests = 0
    with unit_of_work() as session:
        for entry, count in drops:
            order = session.get_one(Order, entry.order_row_id, with_for_update=True)
            provider = session.get_one(Provider, order.provider_id)
            report = record_drop(
                session,
                provider,
                order,
                source="probe",
                settings=settings,
                now=now,
                observed=count,
                expected=entry.expected,
            )
            requests += report.request_id is not None
        for entry in not_probed:
            session.execute(
                update(Order)
                .where(Order.id == entry.order_row_id)
                .values(count_probed_at=entry.probed_before)
                .execution_options(synchronize_session=False)
            )
    if not_probed:
        log.info("count probe: %d orders left for the next run (time limit)", len(not_probed))
    return requests


def _plan(now: datetime, settings: Settings, unit_of_work: UnitOfWork) -> list[_Planned]:
    planned: list[_Planned] = []
    with unit_of_work() as session:
        providers = session.scalars(
            select(Provider).where(Provider.paused.is_(False))
        ).all()
        for provider in providers:
            room = PROBE_BATCH - len(planned)
            services = refill_services(session, provider)
            if room <= 0 or not services:
                continue
            longest = max(
                window_days(s.refill_days, provider.refill_days)
                for s in services.values()
            )
            orders = session.scalars(
                completed_orders(
                    provider.id, list(services), now - timedelta(days=longest)
                )
                # Never-probed orders first; MySQL has no NULLS FIRST.
                .order_by(Order.count_probed_at.is_not(None), Order.count_probed_at, Order.id)
                .limit(room)
            ).all()
            row_ids = [order.id for order in orders]
            busy = orders_with_refill_in_flight(session, provider, orders, services, settings, now)
            quantities = max_remains_seen(session, row_ids)
            for order in orders:
                probed_before = order.count_probed_at
                order.count_probed_at = now
                if order.id in busy or order.service_id is None:
                    continue
                terms = terms_of(provider, services[order.service_id])
                if not eligibility_of(
                    session, provider, order, now, terms=terms
                ).eligible:
                    continue
                quantity = (
                    order.quantity
                    if order.quantity is not None
                    else quantities.get(order.id)
                )
                expected = expected_count(order.start_count, quantity, order.remains)
                if expected is None:
                    continue
                target = ProbeTarget(
                    provider.name,
                    provider.api_url,
                    order.external_id,
                    order.service_id,
                    order.link,
                )
                planned.append(_Planned(order.id, target, expected, probed_before))
    return planned
