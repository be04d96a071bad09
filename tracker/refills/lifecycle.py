"""Drops and refill requests: record a drop, open a request, make one refill attempt.

A drop is always recorded, eligible or not, with the reason when it is not. An eligible
drop opens a refill request, unless the order already has one open: at most one per
order, which a partial unique index on ``refill_requests`` also enforces. A drop
reported while a refill of the order is running, or within the refill cool-down after
the last refill sent (``TRACKER_REFILL_COOLDOWN_HOURS``, per provider and per service),
opens one request due when the cool-down ends; further reports until then add nothing.
So a shop that reports the same drop twice, or five times, gets one refill.

One attempt never holds a transaction across the HTTP call, and never repeats a call
whose answer it did not see:

1. take the claimed request: re-check eligibility and the cool-down, then write the
   attempt as ``sent`` and commit, before anything goes out;
2. call ``refill``;
3. record the answer on that attempt, and what ``decide_after_attempt`` made of it.

A run that finds a ``sent`` attempt without an answer (the worker was killed, or the
write after the call failed) treats it as a refill sent then, answer unknown: the
request ends, and the cool-down runs from that moment. A wait of at most
``COUNTDOWN_LIMIT`` seconds keeps the claim and is returned to the task, which retries
with a Celery countdown; a longer wait lives in ``next_attempt_at``, where the
dispatcher picks the request up within the provider's budget.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import cast

import redis
from sqlalchemy import Select, Table, false, func, or_, select, union
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tracker.core.clock import utcnow
from tracker.config import Settings
from tracker.db.clock import database_clock
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
from tracker.db.session import UnitOfWork, unit_of_work, write_with_retries
from tracker.core.ids import parse_order_id
from tracker.core.refills import (
    ANSWER_UNKNOWN,
    SENT_OUTCOMES,
    Accepted,
    GIVE_UP_REASONS,
    AttemptOutcome,
    Decision,
    Eligibility,
    GiveUp,
    RefillTerms,
    RetryPolicy,
    cooldown_hours,
    decide_after_attempt,
    may_send_refill_at,
    refill_eligibility,
    window_days,
)
from tracker.core.status import COMPLETION_STATUSES, OrderStatus
from tracker.provider.errors import ProviderError, RateLimited
from tracker.provider.messages import outcome_of_error
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.lookup import provider_by_name
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.providers.health import record_call

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


def orders_with_refill_in_flight(session: Session, order_ids: Sequence[int]) -> set[int]:
    """Orders that have an open refill request or a refill not yet final."""
    if not order_ids:
        return set()
    pending = select(_requests.c.order_id).where(_requests.c.order_id.in_(order_ids), _requests.c.final == false())
    running = select(_refills.c.order_id).where(_refills.c.order_id.in_(order_ids), _refills.c.final == false())
    return set(session.scalars(select(union(pending, running).subquery().c.order_id)))


def last_refill_sent_at(session: Session, order_id: int) -> datetime | None:
    """When the last ``refill`` call for this order went out that may have created a
    refill (accepted, or its answer lost): the start of its cool-down."""
    return session.scalar(
        select(func.max(RefillAttempt.at))
        .join(RefillRequest, RefillRequest.id == RefillAttempt.request_id)
        .where(
            RefillRequest.order_id == order_id,
            RefillAttempt.outcome.in_([outcome.value for outcome in SENT_OUTCOMES]),
        )
    )


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


def refill_cooldown_of(session: Session, provider: Provider, service_id: int | None, settings: Settings) -> float:
    service_hours = None
    if service_id is not None:
        service_hours = session.scalar(
            select(Service.refill_cooldown_hours).where(
                Service.provider_id == provider.id, Service.service_id == service_id
            )
        )
    return cooldown_hours(service_hours, provider.refill_cooldown_hours, settings.refill_cooldown_hours)


def next_refill_allowed_at(session: Session, provider: Provider, order: Order, settings: Settings, now: datetime) -> datetime:
    """When a ``refill`` for this order may go out, by the cool-down and the refill in flight."""
    running = session.scalar(
        select(func.count()).where(_refills.c.order_id == order.id, _refills.c.final == false())
    )
    return may_send_refill_at(
        last_sent_at=last_refill_sent_at(session, order.id),
        cooldown_hours=refill_cooldown_of(session, provider, order.service_id, settings),
        refill_in_flight=bool(running),
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
    ends); no request when the order already has one open."""
    open_id = session.scalar(
        select(RefillRequest.id).where(RefillRequest.order_id == order.id, RefillRequest.final == false())
    )
    if open_id is not None:
        return Opened(None, f"refill request {open_id} of this order is already open; no new request")
    due_at = next_refill_allowed_at(session, provider, order, settings, now)
    request = RefillRequest(
        provider_id=order.provider_id,
        order_id=order.id,
        drop_id=drop_id,
        trigger=trigger,
        state=PENDING,
        final=False,
        attempts=0,
        next_attempt_at=due_at,
        created_at=now,
        updated_at=now,
    )
    if due_at > now:
        request.last_message = _cooldown_message(due_at)
    session.add(request)
    session.flush()
    return Opened(request, request.last_message)


def _cooldown_message(due_at: datetime) -> str:
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


# --- one attempt ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptReport:
    request_id: int
    # An AttemptOutcome, or no call made: "skipped" (not ours any more), "deferred"
    # (provider paused, or the cool-down), "not_eligible" (window closed...),
    # "answer_lost" (an earlier attempt's answer was never recorded).
    outcome: str
    state: str | None = None
    # Seconds until the task should try again, holding its claim.
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class _Taken:
    access: ProviderAccess
    external_order_id: int
    window_ends_at: datetime | None
    attempts_made: int
    attempt_id: int
    sent_at: datetime


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.refill_max_attempts, settings.refill_retry_base, settings.refill_retry_cap)


class NothingSent(RuntimeError):
    """The database failed before the attempt was written: nothing went out, so the
    task may simply run again."""


class AnswerNotRecorded(RuntimeError):
    """The ``refill`` call went out, and its answer could not be written. Never retried:
    the attempt stays ``sent``, and the next run treats its answer as lost."""


# Writing a known answer is worth a few quick tries: the alternative is losing it.
ANSWER_WRITE_TRIES = 3


def attempt_refill(
    request_id: int,
    claim_id: int,
    *,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] | None = None,
    rng: random.Random | None = None,
    checkpoint: Callable[[str], None] = lambda step: None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> AttemptReport:
    """``clock``: by default the database's, which the dispatcher's leases and every
    worker's cool-downs are measured by. ``checkpoint`` is called at each step with
    ``"before_call"``, ``"after_call"`` (before each try of the write) and
    ``"after_write"``: tests kill the process or fail the database there.
    ``unit_of_work``: where its transactions are opened (tests pass ``tracker.testing``'s)."""
    if clock is None:
        with unit_of_work(read_only=True) as session:
            clock = database_clock(session, utcnow)
    try:
        taken = _take(request_id, claim_id, settings, clock(), unit_of_work)
    except DBAPIError as failure:
        # Its transaction rolled back: no attempt was written and nothing went out.
        raise NothingSent(f"refill request {request_id}: {type(failure).__name__} before the call") from failure
    if not isinstance(taken, _Taken):
        return taken
    checkpoint("before_call")
    refill_id: str | None = None
    error: ProviderError | None = None
    retry_after: float | None = None
    # Kept back by our own rate limit (busy, or its Redis unreachable): nothing went out,
    # and it says nothing about the provider.
    kept_back = False
    try:
        refill_id = gateway.client(taken.access).refill(taken.external_order_id)
        outcome = AttemptOutcome.ACCEPTED
    except RateLimitBusy as busy:
        kept_back, outcome, retry_after = True, AttemptOutcome.NOT_SENT, busy.wait_seconds
    except redis.RedisError:
        # Only the limiter, before the call, talks to Redis and lets its errors through.
        kept_back, outcome = True, AttemptOutcome.NOT_SENT
    except ProviderError as failure:
        error = failure
        outcome = outcome_of_error(failure)
        retry_after = failure.retry_after if isinstance(failure, RateLimited) else None
    message = f"refill {refill_id}" if refill_id is not None else str(error) if error else "kept back by the rate limit"

    def record_answer() -> AttemptReport:
        checkpoint("after_call")
        now = clock()
        decision = decide_after_attempt(
            outcome,
            attempts_made=taken.attempts_made + (0 if kept_back else 1),
            window_ends_at=taken.window_ends_at,
            now=now,
            policy=retry_policy(settings),
            retry_after=retry_after,
            rng=rng,
        )
        answered = _Answered(outcome, decision, refill_id, message[:MESSAGE_LIMIT], taken.sent_at)
        with unit_of_work() as session:
            if not kept_back:
                record_call(session, taken.access.id, error, now, settings, gateway.rate_limiter)
            return _record_answer(
                session, request_id, claim_id, taken.attempt_id, answered, now, settings, counted=not kept_back
            )

    try:
        # The answer is known: worth a few tries, or it is lost for good.
        report = write_with_retries(record_answer, tries=ANSWER_WRITE_TRIES)
    except DBAPIError as failure:
        log.error(
            "refill request %s: the answer (%s) could not be recorded: %s; it counts as lost",
            request_id, outcome.value, type(failure).__name__,
        )
        raise AnswerNotRecorded(f"refill request {request_id}: answer not recorded") from None
    checkpoint("after_write")
    return report


def _take(
    request_id: int, claim_id: int, settings: Settings, now: datetime, unit_of_work: UnitOfWork
) -> _Taken | AttemptReport:
    """Everything before the call, committed before it: the request is still ours and
    eligible, no refill may be running or cooling down, and the attempt is written."""
    with unit_of_work() as session:
        request = session.get(RefillRequest, request_id, with_for_update=True)
        if request is None or request.final or request.claim_id != claim_id:
            return AttemptReport(request_id, "skipped")
        unanswered = session.scalars(
            select(RefillAttempt).where(
                RefillAttempt.request_id == request_id, RefillAttempt.outcome == AttemptOutcome.SENT.value
            )
        ).all()
        if unanswered:
            # Its holder's lease ran out without an answer written: the call may have
            # created a refill. Counted as sent then (the cool-down runs from it).
            for attempt in unanswered:
                attempt.outcome = AttemptOutcome.NO_ANSWER.value
                attempt.message = "the answer was never recorded (the worker stopped, or the database failed, after the call)"
            request.attempts += len(unanswered)
            _end(request, GAVE_UP, ANSWER_UNKNOWN, now)
            return AttemptReport(request_id, "answer_lost", GAVE_UP)
        order = session.get_one(Order, request.order_id)
        provider = session.get_one(Provider, request.provider_id)
        eligibility = eligibility_of(session, provider, order, now)
        if not eligibility.eligible:
            _end(request, GAVE_UP, eligibility.reason, now)
            return AttemptReport(request_id, "not_eligible", GAVE_UP)
        # Only a pause stops a claimed attempt. An open or half-open circuit does not: the
        # dispatcher claimed this request within the provider's budget, possibly as the
        # half-open probe, which must go out for the circuit to close.
        allowed_at = next_refill_allowed_at(session, provider, order, settings, now)
        if provider.paused or allowed_at > now:
            request.next_attempt_at = max(allowed_at, now + timedelta(seconds=settings.tick_interval))
            request.claim_id = None
            if allowed_at > now:
                request.last_message = _cooldown_message(allowed_at)
            return AttemptReport(request_id, "deferred", PENDING)
        # Hold the request through the call and the write after it, however late the task
        # started; a run that finds this attempt still "sent" after that treats it as lost.
        request.next_attempt_at = now + timedelta(seconds=settings.lease_seconds)
        attempt = RefillAttempt(request_id=request_id, at=now, outcome=AttemptOutcome.SENT.value)
        session.add(attempt)
        session.flush()
        return _Taken(
            access=ProviderAccess.of(provider, settings),
            external_order_id=order.external_id,
            window_ends_at=eligibility.window_ends_at,
            attempts_made=request.attempts,
            attempt_id=attempt.id,
            sent_at=now,
        )


def _end(request: RefillRequest, state: str, message: str | None, now: datetime) -> None:
    request.state = state
    request.final = True
    request.next_attempt_at = None
    request.claim_id = None
    request.last_message = message
    request.updated_at = now


@dataclass(frozen=True, slots=True)
class _Answered:
    outcome: AttemptOutcome
    decision: Decision
    refill_id: str | None
    message: str
    sent_at: datetime


def _record_answer(
    session: Session,
    request_id: int,
    claim_id: int,
    attempt_id: int,
    answered: _Answered,
    now: datetime,
    settings: Settings,
    *,
    counted: bool,
) -> AttemptReport:
    """``counted``: the attempt reached (or may have reached) the provider, so it counts
    towards the attempt cap."""
    request = session.get_one(RefillRequest, request_id, with_for_update=True)
    refill = None
    if answered.refill_id is not None:
        refill = _store_refill(session, request, answered.refill_id, answered.sent_at, now)
        if refill is None:
            # The ID is already another order's refill: this one cannot be followed.
            answered = replace(
                answered,
                outcome=AttemptOutcome.BAD_REFILL_ID,
                decision=GiveUp(GIVE_UP_REASONS[AttemptOutcome.BAD_REFILL_ID]),
                message=f"refill {answered.refill_id}, an ID another order's refill already has",
            )
    attempt = session.get_one(RefillAttempt, attempt_id)
    attempt.outcome = answered.outcome.value
    attempt.message = answered.message
    request.updated_at = now
    outcome = answered.outcome.value
    if counted:
        request.attempts += 1
    if request.final or request.claim_id != claim_id:
        # The lease ran out during the call (it should not: it outlasts any call). The
        # answer and any refill it created are kept; the request is someone else's now.
        log.warning("refill request %s changed hands during an attempt", request_id)
        return AttemptReport(request_id, outcome, request.state)
    decision = answered.decision
    if isinstance(decision, Accepted):
        request.refill_id = refill.id if refill is not None else None
        _end(request, ACCEPTED, answered.message, now)
        return AttemptReport(request_id, outcome, ACCEPTED)
    if isinstance(decision, GiveUp):
        reason = decision.reason if decision.answer_unknown else f"{decision.reason}: {answered.message}"
        _end(request, GAVE_UP, reason[:MESSAGE_LIMIT], now)
        if decision.not_refillable:
            session.get_one(Order, request.order_id).refillable = False
        return AttemptReport(request_id, outcome, GAVE_UP)
    request.last_message = answered.message
    wait = max(0.0, (decision.at - now).total_seconds())
    if wait <= COUNTDOWN_LIMIT:
        # Keep the claim; the lease covers the countdown in case the retry message is lost.
        request.next_attempt_at = decision.at + timedelta(seconds=settings.lease_seconds)
        return AttemptReport(request_id, outcome, PENDING, retry_in=wait)
    request.next_attempt_at = decision.at
    request.claim_id = None
    return AttemptReport(request_id, outcome, PENDING)


def _store_refill(
    session: Session, request: RefillRequest, refill_id: str, sent_at: datetime, now: datetime
) -> Refill | None:
    """The refill row for this answer; None when the ID is already another order's."""
    existing = session.scalar(
        select(Refill).where(Refill.provider_id == request.provider_id, Refill.external_id == refill_id)
    )
    if existing is not None:
        if existing.order_id != request.order_id:
            log.error(
                "refill request %s: the provider answered refill ID %s, which order row %s already has",
                request.id, refill_id, existing.order_id,
            )
            return None
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

