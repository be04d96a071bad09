"""The scheduled refill policy ("auto-refill"): request a refill every N hours inside the
guarantee window, and let the provider decide whether anything dropped.

N comes from the service, else the provider, else ``TRACKER_AUTO_REFILL_HOURS``; 0
switches it off at that level. The first scheduled request comes N hours after
completion. A scheduled request records no drop (none was seen) and follows the rule of
drops (``tracker.core.refills.drop_verdict``): while a refill is in flight (a request
open, a refill running, or one whose answer was lost, inside its cool-down) that turn is
skipped; after a refill ended inside the cool-down, the request waits for its end.
``orders.next_auto_refill_at`` holds each order's next turn, so a scan only touches due
orders.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select

from tracker.config import Settings
from tracker.db.models import Order, Provider
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.core.refills import auto_refill_hours, next_auto_refill, window_days
from tracker.refills.drops import (
    completed_orders,
    eligibility_of,
    open_request,
    orders_with_refill_in_flight,
    refill_services,
    terms_of,
)

SCAN_LIMIT = 500


def schedule_auto_refills(settings: Settings, now: datetime, *, unit_of_work: UnitOfWork = unit_of_work) -> int:
    """Open the scheduled refill requests that are due; returns how many were opened.
    They are due at once and the dispatcher's next tick claims them."""
    opened = 0
    with unit_of_work() as session:
        providers = session.scalars(
            select(Provider).where(Provider.paused.is_(False))
        ).all()
        for provider in providers:
            services = refill_services(session, provider)
            every = {
                service_id: hours
                for service_id, service in services.items()
                if (
                    hours := auto_refill_hours(
                        service.auto_refill_hours,
                        provider.auto_refill_hours,
                        settings.auto_refill_hours,
                    )
                )
                is not None
            }
            if not every:
                continue
            longest = timedelta(
                days=max(
                    window_days(services[sid].refill_days, provider.refill_days)
                    for sid in every
                )
            )
            orders = session.scalars(
                completed_orders(provider.id, list(every), now - longest)
                .where(
                    or_(
                        Order.next_auto_refill_at.is_(None),
                        Order.next_auto_refill_at <= now,
                    )
                )
                .order_by(Order.id)
                .limit(SCAN_LIMIT)
            ).all()
            busy = orders_with_refill_in_flight(session, provider, orders, services, settings, now)
            for order in orders:
                if order.service_id is None or order.completed_at is None:
                    continue  # the query excludes these; this narrows the types
                terms = terms_of(provider, services[order.service_id])
                if not eligibility_of(
                    session, provider, order, now, terms=terms
                ).eligible:
                    # Parked until it falls out of the scan (its own window is shorter).
                    order.next_auto_refill_at = order.completed_at + longest
                    continue
                due, following = next_auto_refill(
                    completed_at=order.completed_at,
                    scheduled_at=order.next_auto_refill_at,
                    every_hours=every[order.service_id],
                    now=now,
                )
                order.next_auto_refill_at = following
                if due and order.id not in busy:
                    request = open_request(
                        session, provider, order, trigger="schedule", settings=settings, now=now
                    ).request
                    opened += request is not None
    return opened
