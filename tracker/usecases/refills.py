"""Drops and refill requests: record a drop, open a request, make one refill attempt.

A drop is always recorded, eligible or not, with the reason when it is not. An eligible
drop opens a refill request unless the order already has one in flight (a pending
request or a refill not yet final): at most one per order, which a partial unique index
on ``refill_requests`` also enforces.

One attempt is three steps, never a transaction across the HTTP call: take the claimed
request (re-check eligibility, extend its lease), call ``refill``, then record the
attempt and what ``decide_after_attempt`` made of it. A wait of at most
``COUNTDOWN_LIMIT`` seconds keeps the claim and is returned to the task, which retries
with a Celery countdown; a longer wait lives in ``next_attempt_at`` and the dispatcher
picks the request up when it is due.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from tracker.clock import utcnow
from tracker.config import Settings
from tracker.db.claims import new_claim_id
from tracker.db.models import (
    Drop,
    Order,
    Provider,
    Refill,
    RefillAttempt,
    RefillRequest,
    Service,
)
from tracker.db.refill_store import (
    earlier_attempt_ambiguous,
    orders_with_refill_in_flight,
    release_request_claim,
)
from tracker.db.session import unit_of_work
from tracker.domain.health import CircuitState
from tracker.domain.ids import parse_order_id
from tracker.domain.refills import (
    Accepted,
    AttemptOutcome,
    Decision,
    Eligibility,
    GiveUp,
    RefillTerms,
    RetryPolicy,
    decide_after_attempt,
    outcome_of_error,
    refill_eligibility,
    window_days,
)
from tracker.domain.status import COMPLETION_STATUSES, OrderStatus
from tracker.provider.errors import ProviderError, RateLimited
from tracker.ratelimit import RateLimitBusy
from tracker.usecases.enqueue import provider_by_name
from tracker.usecases.gateway import Gateway, ProviderAccess
from tracker.usecases.provider_health import health_of, record_call

log = logging.getLogger("tracker.refills")

# Waits up to this long stay in a Celery countdown (far below the broker's 900 s
# visibility timeout); longer ones go to the database.
COUNTDOWN_LIMIT = 60.0
MESSAGE_LIMIT = 500

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
    # Set when the request was opened already claimed, for an immediate attempt.
    claim_id: int | None = None

    def describe(self) -> str:
        head = f"{self.provider} order {self.order_id}: drop recorded"
        if not self.eligible:
            return f"{head}, no refill: {self.reason}"
        if self.request_id is None:
            return f"{head}; {self.reason}"
        return f"{head}; refill request {self.request_id} opened"


def open_request(
    session: Session,
    order: Order,
    *,
    trigger: str,
    now: datetime,
    drop_id: int | None = None,
    lease_until: datetime | None = None,
) -> RefillRequest | None:
    """A new pending request, due now (or claimed until ``lease_until``); None when the
    order already has a refill in flight."""
    if orders_with_refill_in_flight(session, [order.id]):
        return None
    request = RefillRequest(
        provider_id=order.provider_id,
        order_id=order.id,
        drop_id=drop_id,
        trigger=trigger,
        state=PENDING,
        final=False,
        attempts=0,
        next_attempt_at=lease_until or now,
        claim_id=new_claim_id() if lease_until is not None else None,
        created_at=now,
        updated_at=now,
    )
    session.add(request)
    session.flush()
    return request


def record_drop(
    session: Session,
    provider: Provider,
    order: Order,
    *,
    source: str,
    now: datetime,
    observed: int | None = None,
    expected: int | None = None,
    lease_until: datetime | None = None,
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
    report = DropReport(
        provider.name,
        order.external_id,
        drop.id,
        eligibility.eligible,
        eligibility.reason,
    )
    if not eligibility.eligible:
        log.info(
            "drop recorded, no refill: %s",
            eligibility.reason,
            extra={"provider": provider.name},
        )
        return report
    request = open_request(
        session,
        order,
        trigger="drop",
        now=now,
        drop_id=drop.id,
        lease_until=lease_until,
    )
    if request is None:
        drop.reason = "a refill of this order is already in flight; no new request"
        return DropReport(provider.name, order.external_id, drop.id, True, drop.reason)
    return DropReport(
        provider.name,
        order.external_id,
        drop.id,
        True,
        None,
        request.id,
        request.claim_id,
    )


def report_drop(
    session: Session,
    provider_name: object,
    raw_order_id: object,
    *,
    now: datetime,
    lease_until: datetime | None = None,
) -> DropReport:
    """The shop says this order dropped (task ``tracker.report_drop``, ``tracker
    report-drop``). Raises ``UnknownProvider``, ``UnknownOrder`` or ``ValueError``."""
    provider, order = find_order(session, provider_name, raw_order_id)
    return record_drop(
        session, provider, order, source="shop", now=now, lease_until=lease_until
    )


# --- one attempt ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptReport:
    request_id: int
    # An AttemptOutcome, or no call made: "skipped" (not ours any more), "deferred"
    # (provider unavailable or rate limit busy), "not_eligible" (window closed...).
    outcome: str
    state: str | None = None
    # Seconds until the task should try again, holding its claim.
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class _Taken:
    access: ProviderAccess
    external_order_id: int
    window_ends_at: datetime | None
    earlier_ambiguous: bool
    attempts_made: int


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        settings.refill_max_attempts,
        settings.refill_retry_base,
        settings.refill_retry_cap,
    )


def attempt_refill(
    request_id: int,
    claim_id: int,
    *,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] = utcnow,
    rng: random.Random | None = None,
) -> AttemptReport:
    taken = _take(request_id, claim_id, settings, clock())
    if not isinstance(taken, _Taken):
        return taken
    sent_at = clock()
    refill_id: str | None = None
    error: ProviderError | None = None
    try:
        refill_id = gateway.client(taken.access).refill(taken.external_order_id)
        outcome = AttemptOutcome.ACCEPTED
    except RateLimitBusy as busy:
        with unit_of_work() as session:
            release_request_claim(
                session,
                claim_id,
                [request_id],
                next_attempt_at=clock() + timedelta(seconds=busy.wait_seconds),
            )
        return AttemptReport(request_id, "deferred", PENDING)
    except ProviderError as failure:
        error = failure
        outcome = outcome_of_error(failure)
    now = clock()
    decision = decide_after_attempt(
        outcome,
        attempts_made=taken.attempts_made + 1,
        earlier_ambiguous=taken.earlier_ambiguous,
        window_ends_at=taken.window_ends_at,
        now=now,
        policy=retry_policy(settings),
        retry_after=error.retry_after if isinstance(error, RateLimited) else None,
        rng=rng,
    )
    attempted = _Attempted(
        outcome=outcome,
        decision=decision,
        refill_id=refill_id,
        message=f"refill {refill_id}"
        if refill_id is not None
        else str(error)[:MESSAGE_LIMIT],
        sent_at=sent_at,
    )
    with unit_of_work() as session:
        record_call(
            session, taken.access.id, error, now, settings, gateway.rate_limiter
        )
        session.add(
            RefillAttempt(
                request_id=request_id,
                at=sent_at,
                outcome=outcome.value,
                message=attempted.message,
            )
        )
        return _record_decision(session, request_id, claim_id, attempted, now, settings)


def _take(
    request_id: int, claim_id: int, settings: Settings, now: datetime
) -> _Taken | AttemptReport:
    with unit_of_work() as session:
        request = session.get(RefillRequest, request_id, with_for_update=True)
        if request is None or request.final or request.claim_id != claim_id:
            return AttemptReport(request_id, "skipped")
        order = session.get_one(Order, request.order_id)
        provider = session.get_one(Provider, request.provider_id)
        eligibility = eligibility_of(session, provider, order, now)
        if not eligibility.eligible:
            _end(request, GAVE_UP, eligibility.reason, now)
            return AttemptReport(request_id, "not_eligible", GAVE_UP)
        health = health_of(provider)
        if health.state(now) in (CircuitState.PAUSED, CircuitState.OPEN):
            resume = provider.circuit_open_until or now
            request.next_attempt_at = max(
                resume, now + timedelta(seconds=settings.tick_interval)
            )
            request.claim_id = None
            return AttemptReport(request_id, "deferred", PENDING)
        # Hold the request through the call, however late the task started.
        request.next_attempt_at = now + timedelta(seconds=settings.lease_seconds)
        return _Taken(
            access=ProviderAccess.of(provider, settings),
            external_order_id=order.external_id,
            window_ends_at=eligibility.window_ends_at,
            earlier_ambiguous=earlier_attempt_ambiguous(session, request_id),
            attempts_made=request.attempts,
        )


def _end(
    request: RefillRequest, state: str, message: str | None, now: datetime
) -> None:
    request.state = state
    request.final = True
    request.next_attempt_at = None
    request.claim_id = None
    request.last_message = message
    request.updated_at = now


@dataclass(frozen=True, slots=True)
class _Attempted:
    outcome: AttemptOutcome
    decision: Decision
    refill_id: str | None
    message: str
    sent_at: datetime


def _record_decision(
    session: Session,
    request_id: int,
    claim_id: int,
    attempted: _Attempted,
    now: datetime,
    settings: Settings,
) -> AttemptReport:
    request = session.get_one(RefillRequest, request_id, with_for_update=True)
    request.attempts += 1
    request.updated_at = now
    refill = None
    if attempted.refill_id is not None:
        refill = _store_refill(
            session, request, attempted.refill_id, attempted.sent_at, now
        )
    outcome = attempted.outcome.value
    if request.final or request.claim_id != claim_id:
        # The lease ran out during the call (it should not: it outlasts any call). The
        # attempt and any refill it created are kept; the request is someone else's now.
        log.warning("refill request %s changed hands during an attempt", request_id)
        return AttemptReport(request_id, outcome, request.state)
    decision = attempted.decision
    if isinstance(decision, Accepted):
        request.refill_id = refill.id if refill is not None else None
        text = (
            attempted.message
            if decision.confirmed
            else (
                "accepted earlier: the provider has a refill of this order in progress after an "
                "unanswered attempt (its refill ID is unknown)"
            )
        )
        _end(request, ACCEPTED, text, now)
        return AttemptReport(request_id, outcome, ACCEPTED)
    if isinstance(decision, GiveUp):
        _end(
            request,
            GAVE_UP,
            f"{decision.reason}: {attempted.message}"[:MESSAGE_LIMIT],
            now,
        )
        if decision.not_refillable:
            session.get_one(Order, request.order_id).refillable = False
        return AttemptReport(request_id, outcome, GAVE_UP)
    request.last_message = attempted.message
    wait = max(0.0, (decision.at - now).total_seconds())
    if wait <= COUNTDOWN_LIMIT:
        # Keep the claim; the lease covers the countdown in case the retry message is lost.
        request.next_attempt_at = decision.at + timedelta(
            seconds=settings.lease_seconds
        )
        return AttemptReport(request_id, outcome, PENDING, retry_in=wait)
    request.next_attempt_at = decision.at
    request.claim_id = None
    return AttemptReport(request_id, outcome, PENDING)


def _store_refill(
    session: Session,
    request: RefillRequest,
    refill_id: str,
    sent_at: datetime,
    now: datetime,
) -> Refill:
    existing = session.scalar(
        select(Refill).where(
            Refill.provider_id == request.provider_id, Refill.external_id == refill_id
        )
    )
    if existing is not None:
        return existing
    refill = Refill(
        provider_id=request.provider_id,
        order_id=request.order_id,
        external_id=refill_id,
        final=False,
        next_poll_at=now,
        requested_at=sent_at,
        updated_at=now,
    )
    session.add(refill)
    session.flush()
    return refill
