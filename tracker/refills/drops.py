"""Drops and refill requests: when an order may be refilled, record a drop, open a request.

A drop is always recorded, eligible or not, with what it led to: the reason it is not
eligible, the request it opened, or why it opened none. One drop, one refill
(``tracker.core.refills.drop_verdict``):

- a drop reported while the order's refill request is open (waiting, being retried, or
  its call out now) or its refill still runs (accepted, not seen final yet) is the same
  drop: it opens nothing, however often it is reported;
- a refill whose answer was lost, or whose ID cannot be polled, may run unseen: it
  counts as running until its cool-down ends;
- a drop reported after the order's last refill ended is a new drop. It opens one
  request, due at once, or, within the refill cool-down after the last refill sent
  (``TRACKER_REFILL_COOLDOWN_HOURS``, per provider and per service), when it ends;
  further reports until then find that request open.

At most one request is open per order: reports of one order are serialised by a lock on
its row (SQLite: by the write lock), and a partial unique index on ``refill_requests``
refuses a second open request whatever races (a task is then retried and finds it).

The dispatcher sends each due request within the provider's budget, as one attempt
(``tracker.refills.attempts``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Select, Table, false, func, or_, select
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.models import (
    Drop,
    Order,
    OrderEvent,
    Provider,
    Refill,
    RefillAttempt,
    RefillRequest,
    Service,
)
from tracker.core.ids import parse_order_id
from tracker.core.refills import (
    SENT_OUTCOMES,
    UNFOLLOWED_OUTCOMES,
    AttemptOutcome,
    Eligibility,
    RefillsOfOrder,
    RefillTerms,
    SameDrop,
    cooldown_hours,
    drop_verdict,
    may_send_refill_at,
    refill_eligibility,
    window_days,
)
from tracker.core.status import COMPLETION_STATUSES, OrderStatus
from tracker.providers.lookup import provider_by_name

log = logging.getLogger("tracker.refills")


PENDING = "pending"
ACCEPTED = "accepted"
GAVE_UP = "gave_up"


class UnknownOrder(LookupError):
    pass


# --- eligibility and drops -----------------------------------------------------------------


def terms_of(provider: Provider, service: Service) -> RefillTerms:
    return RefillTerms(
        service.service_id,
        service.refill,
        window_days(service.refill_days, provider.refill_days),
    )


def refill_terms(
    session: Session, provider: Provider, service_id: int | None
) -> RefillTerms | None:
    if service_id is None:
        return None
    service = session.scalar(
        select(Service).where(
            Service.provider_id == provider.id, Service.service_id == service_id
        )
    )
    return terms_of(provider, service) if service is not None else None


def refill_services(session: Session, provider: Provider) -> dict[int, Service]:
    """The provider's services whose catalog entry says ``refill: true``."""
    services = session.scalars(
        select(Service).where(
            Service.provider_id == provider.id, Service.refill.is_(True)
        )
    )
    return {service.service_id: service for service in services}


def completed_orders(
    provider_id: int, service_ids: Sequence[int], completed_since: datetime
) -> Select[Order]:
    """Orders of these services completed since the cutoff that the provider has not
    declared non-refillable: the candidates of the periodic refill scans."""
    return select(Order).where(
        Order.provider_id == provider_id,
        Order.service_id.in_(service_ids),
        Order.status.in_([status.value for status in COMPLETION_STATUSES]),
        Order.completed_at >= completed_since,
        or_(Order.refillable.is_(None), Order.refillable.is_(True)),
    )


def eligibility_of(
    session: Session,
    provider: Provider,
    order: Order,
    now: datetime,
    *,
    terms: RefillTerms | None = None,
) -> Eligibility:
    """``terms``: the order's service terms when the caller has them already."""
    return refill_eligibility(
        service_id=order.service_id,
        terms=terms
        if terms is not None
        else refill_terms(session, provider, order.service_id),
        status=OrderStatus(order.status) if order.status is not None else None,
        completed_at=order.completed_at,
        refillable=order.refillable,
        now=now,
    )


def find_order(
    session: Session, provider_name: object, raw_order_id: object
) -> tuple[Provider, Order]:
    """The tracked order, locked for this transaction on PostgreSQL, so two drops of one
    order reported at once open one request."""
    provider = provider_by_name(session, provider_name)
    external_id = parse_order_id(raw_order_id)
    order = session.scalar(
        select(Order)
        .where(Order.provider_id == provider.id, Order.external_id == external_id)
        .with_for_update()
    )
    if order is None:
        raise UnknownOrder(f"order {external_id} of {provider.name} is not tracked")
    return provider, order


@dataclass(frozen=True, slots=True)
class DropReport:
    provider: str
    order_id: int
    drop_id: int
    eligible: bool
    reason: str | None
    request_id: int | None = None

    def describe(self) -> str:
        head = f"{self.provider} order {self.order_id}: drop recorded"
        if not self.eligible:
            return f"{head}, no refill: {self.reason}"
        if self.request_id is None:
            return f"{head}; {self.reason}"
        if self.reason:
            return f"{head}; refill request {self.request_id}: {self.reason}"
        return f"{head}; refill request {self.request_id} opened"


# --- what the request path asks in bulk -----------------------------------------------------

_requests = cast(Table, RefillRequest.__table__)
_refills = cast(Table, Refill.__table__)
_attempts = cast(Table, RefillAttempt.__table__)


def refills_of_orders(session: Session, order_ids: Sequence[int]) -> dict[int, RefillsOfOrder]:
    """What ``drop_verdict`` needs to know of each order's refills."""
    if not order_ids:
        return {}
    # Three statements, read in this order on purpose. Each sees what is committed when it
    # starts, and an attempt's answer ends its request and records its outcome and its
    # refill in one commit; a refill ends after that. So whatever commits between two
    # reads, a later read finds what an earlier one saw leave: a report never falls
    # between two states and takes a running refill for an ended one.
    open_requests = dict(
        session.execute(
            select(_requests.c.order_id, func.min(_requests.c.id))
            .where(_requests.c.order_id.in_(order_ids), _requests.c.final == false())
            .group_by(_requests.c.order_id)
        ).all()
    )
    sent = session.execute(
        select(_requests.c.order_id, _attempts.c.outcome, func.max(_attempts.c.at))
        .join(_requests, _requests.c.id == _attempts.c.request_id)
        .where(
            _requests.c.order_id.in_(order_ids),
            _attempts.c.outcome.in_([outcome.value for outcome in SENT_OUTCOMES]),
        )
        .group_by(_requests.c.order_id, _attempts.c.outcome)
    ).all()
    last_sent: dict[int, datetime] = {}
    last_unfollowed: dict[int, datetime] = {}
    for order_id, outcome, at in sent:
        last_sent[order_id] = max(at, last_sent.get(order_id, at))
        if AttemptOutcome(outcome) in UNFOLLOWED_OUTCOMES:
            last_unfollowed[order_id] = max(at, last_unfollowed.get(order_id, at))
    running = dict(
        session.execute(
            select(_refills.c.order_id, func.min(_refills.c.external_id))
            .where(_refills.c.order_id.in_(order_ids), _refills.c.final == false())
            .group_by(_refills.c.order_id)
        ).all()
    )
    return {
        order_id: RefillsOfOrder(
            open_request_id=open_requests.get(order_id),
            running_refill=running.get(order_id),
            last_sent_at=last_sent.get(order_id),
            last_unfollowed_at=last_unfollowed.get(order_id),
        )
        for order_id in order_ids
    }


def orders_with_refill_in_flight(
    session: Session,
    provider: Provider,
    orders: Sequence[Order],
    services: Mapping[int, Service],
    settings: Settings,
    now: datetime,
) -> set[int]:
    """The orders whose drop now would be the same drop as a refill in flight: the
    periodic scans (count probe, auto-refill) leave them alone this turn."""
    refills = refills_of_orders(session, [order.id for order in orders])
    return {
        order.id
        for order in orders
        if isinstance(
            drop_verdict(
                refills[order.id],
                cooldown_hours=cooldown_of(
                    provider, services.get(order.service_id) if order.service_id is not None else None, settings
                ),
                now=now,
            ),
            SameDrop,
        )
    }


def max_remains_seen(session: Session, order_ids: Sequence[int]) -> dict[int, int]:
    """The largest ``remains`` each order ever reported: its quantity, when the tracker saw
    it before delivery started, and a lower bound of it otherwise."""
    if not order_ids:
        return {}
    rows = session.execute(
        select(OrderEvent.order_id, func.max(OrderEvent.remains))
        .where(OrderEvent.order_id.in_(order_ids), OrderEvent.remains.is_not(None))
        .group_by(OrderEvent.order_id)
    ).all()
    return {order_id: remains for order_id, remains in rows if remains is not None}


def cooldown_of(provider: Provider, service: Service | None, settings: Settings) -> float:
    """The refill cool-down of an order of this service, in hours."""
    service_hours = service.refill_cooldown_hours if service is not None else None
    return cooldown_hours(service_hours, provider.refill_cooldown_hours, settings.refill_cooldown_hours)


def refill_cooldown_of(session: Session, provider: Provider, service_id: int | None, settings: Settings) -> float:
    service = None
    if service_id is not None:
        service = session.scalar(
            select(Service).where(Service.provider_id == provider.id, Service.service_id == service_id)
        )
    return cooldown_of(provider, service, settings)


def next_refill_allowed_at(session: Session, provider: Provider, order: Order, settings: Settings, now: datetime) -> datetime:
    """When a ``refill`` for this order may go out, by the cool-down and the refill in flight."""
    refills = refills_of_orders(session, [order.id])[order.id]
    return may_send_refill_at(
        last_sent_at=refills.last_sent_at,
        cooldown_hours=refill_cooldown_of(session, provider, order.service_id, settings),
        refill_in_flight=refills.running_refill is not None,
        now=now,
        recheck=timedelta(seconds=settings.refill_retry_base),
    )


# --- drops ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    request: RefillRequest | None
    # Why no request was opened, or why the one opened waits.
    reason: str | None = None


def open_request(
    session: Session,
    provider: Provider,
    order: Order,
    *,
    trigger: str,
    settings: Settings,
    now: datetime,
    drop_id: int | None = None,
) -> Opened:
    """A new pending request, due when a refill may go out (at once, or when the cool-down
    ends); none while a refill of the order is in flight (``drop_verdict``)."""
    verdict = drop_verdict(
        refills_of_orders(session, [order.id])[order.id],
        cooldown_hours=refill_cooldown_of(session, provider, order.service_id, settings),
        now=now,
    )
    if isinstance(verdict, SameDrop):
        return Opened(None, f"{verdict.reason}, no new request")
    request = RefillRequest(
        provider_id=order.provider_id,
        order_id=order.id,
        drop_id=drop_id,
        trigger=trigger,
        state=PENDING,
        final=False,
        attempts=0,
        next_attempt_at=verdict.due_at,
        created_at=now,
        updated_at=now,
    )
    if verdict.due_at > now:
        request.last_message = cooldown_message(verdict.due_at)
    session.add(request)
    session.flush()
    return Opened(request, request.last_message)


def cooldown_message(due_at: datetime) -> str:
    return (
        "a refill of this order was sent recently (or is still running): this request "
        f"waits for the refill cool-down and goes out at {due_at.isoformat()}"
    )


def record_drop(
    session: Session,
    provider: Provider,
    order: Order,
    *,
    source: str,
    settings: Settings,
    now: datetime,
    observed: int | None = None,
    expected: int | None = None,
) -> DropReport:
    eligibility = eligibility_of(session, provider, order, now)
    drop = Drop(
        order_id=order.id,
        source=source,
        detected_at=now,
        observed_count=observed,
        expected_count=expected,
        eligible=eligibility.eligible,
        reason=eligibility.reason,
    )
    session.add(drop)
    session.flush()
    if not eligibility.eligible:
        log.info("drop recorded, no refill: %s", eligibility.reason, extra={"provider": provider.name})
        return DropReport(provider.name, order.external_id, drop.id, False, eligibility.reason)
    opened = open_request(session, provider, order, trigger="drop", settings=settings, now=now, drop_id=drop.id)
    drop.reason = opened.reason
    request_id = opened.request.id if opened.request is not None else None
    return DropReport(provider.name, order.external_id, drop.id, True, opened.reason, request_id)


def report_drop(
    session: Session,
    provider_name: object,
    raw_order_id: object,
    *,
    settings: Settings,
    now: datetime,
) -> DropReport:
    """The shop says this order dropped (task ``tracker.report_drop``, ``tracker
    report-drop``). Raises ``UnknownProvider``, ``UnknownOrder`` or ``ValueError``."""
    provider, order = find_order(session, provider_name, raw_order_id)
    return record_drop(session, provider, order, source="shop", settings=settings, now=now)
