"""One refill attempt: the only code that sends ``refill`` to a provider.

An attempt never holds a transaction across the HTTP call, and never repeats a call
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
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import redis
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline, deadline_or_after, interruptions
from tracker.db.clock import database_clock
from tracker.db.models import (
    Order,
    Provider,
    Refill,
    RefillAttempt,
    RefillRequest,
)
from tracker.db.session import UnitOfWork, unit_of_work, write_with_retries
from tracker.core.refills import (
    ANSWER_UNKNOWN,
    Accepted,
    GIVE_UP_REASONS,
    AttemptOutcome,
    Decision,
    GiveUp,
    RetryPolicy,
    decide_after_attempt,
)
from tracker.apiv2.client import calls_finish_by
from tracker.apiv2.errors import ProviderError, RateLimited
from tracker.apiv2.messages import outcome_of_error
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.providers.health import record_abandoned_call, record_call

from tracker.refills.drops import (
    ACCEPTED,
    GAVE_UP,
    PENDING,
    cooldown_message,
    eligibility_of,
    next_refill_allowed_at,
)

log = logging.getLogger("tracker.refills")

# Waits up to this long stay in a Celery countdown (far below the broker's 900 s
# visibility timeout); longer ones go to the database.
COUNTDOWN_LIMIT = 60.0
# The longest provider message kept on an attempt.
MESSAGE_LIMIT = 500

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
    """The database failed before the attempt was written, or too little of the task's
    time was left for the call: nothing went out, so the task may simply run again."""


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
    deadline: Deadline | None = None,
) -> AttemptReport:
    """``deadline``: the task's soft time limit. A refill is not idempotent: abandoned
    mid-call, its answer is lost and it blocks the order's next refill for a cool-down,
    so it goes out only when one whole try, and the rate limit's wait, fit before it.
    ``clock``: by default the database's, which the dispatcher's leases and every
    worker's cool-downs are measured by. ``checkpoint`` is called at each step with
    ``"before_call"``, ``"after_call"`` (before each try of the write) and
    ``"after_write"``: tests kill the process or fail the database there.
    ``unit_of_work``: where its transactions are opened (tests pass ``tracker.testing``'s)."""
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    if not deadline.allows(settings.provider_try_seconds + WRITE_MARGIN_SECONDS):
        raise NothingSent(f"refill request {request_id}: too little time left for the call")
    if clock is None:
        with unit_of_work(read_only=True) as session:
            clock = database_clock(session)
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
        # The rate limit's wait is cut to what leaves the try its time (else: kept back).
        with calls_finish_by(deadline.sooner(WRITE_MARGIN_SECONDS)):
            refill_id = gateway.client(taken.access).refill(taken.external_order_id)
        outcome = AttemptOutcome.ACCEPTED
    except interruptions():
        # The soft time limit, mid-call: the attempt stays "sent" (the next run treats its
        # answer as lost), and the provider's circuit counts the hang as the timeout it is.
        record_abandoned_call(unit_of_work, taken.access.id, "refill", clock(), settings, gateway.rate_limiter)
        raise
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
                request.last_message = cooldown_message(allowed_at)
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

