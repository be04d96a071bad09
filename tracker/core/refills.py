"""Refills, pure: eligibility and the guarantee window, the refill status state machine,
what to do after each attempt to request a refill, and what a count reading means.

No database, no clock, no I/O: every function takes ``now`` (and a ``random.Random`` where
jitter is drawn) from its caller.

Eligibility. An order may get a refill when its service is known and its catalog entry
says ``refill: true``, the provider has not told us refill is disabled for the order, it
is Completed or Partial, and ``now`` is inside the guarantee window: ``window_days``
counted from ``completed_at`` (when the tracker first saw it completed). The window is
the service's own ``refill_days`` when the operator set one, else the provider's.

Refill status machine: the same promises as ``tracking`` for orders. Stale answers are
ignored; the same answer twice records nothing; a status change is one transition; K
consecutive "Refill not found" answers end the refill as ``Not found``; final statuses
(Completed, Rejected, Canceled, Not found) stop polling.

Attempts. ``refill`` is not idempotent, and the shop's standing with its provider is
spent by each one that goes out. An attempt is recorded as ``sent`` before the call; its
answer decides one of ``Accepted``, ``RetryAt(t)`` or ``GiveUp(reason)``. Only answers
that prove the provider did not act (a refusal, 429, no connection) are retried, with
exponential back-off and jitter until the attempt cap or the end of the window. An
attempt whose answer was lost (timeout, connection cut, 5xx, garbled body, or a worker
gone between the call and the write) may have created a refill whose ID we will never
learn (API v2 cannot list refills by order): it counts as a refill sent at that moment
and is never repeated. A refill sent starts the order's refill cool-down, during which no
new ``refill`` for the order goes out.

Drops. One drop, one refill: a drop reported while the order's refill request is open or
its refill still runs is the same drop and opens nothing; a refill that cannot be followed
counts as running until its cool-down ends. A drop after the last refill ended is a new
one, and its request is due when the cool-down ends (``drop_verdict``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from tracker.core.reports import PerIdError, RefillReport
from tracker.core.scheduling import failure_backoff
from tracker.core.status import COMPLETION_STATUSES, FINAL_REFILL_STATUSES, OrderStatus, RefillStatus


# --- eligibility ---------------------------------------------------------------------------


class Ineligible(StrEnum):
    SERVICE_UNKNOWN = "service_unknown"
    NO_REFILL = "service_has_no_refill"
    DISABLED = "refill_disabled"
    NOT_COMPLETED = "not_completed"
    WINDOW_CLOSED = "window_closed"


@dataclass(frozen=True, slots=True)
class RefillTerms:
    """What the catalog and the operator say about refills of one service."""

    service_id: int
    refill: bool
    window_days: int


@dataclass(frozen=True, slots=True)
class Eligibility:
    ineligible: Ineligible | None
    reason: str | None
    window_ends_at: datetime | None

    @property
    def eligible(self) -> bool:
        return self.ineligible is None


def window_days(service_days: int | None, provider_days: int) -> int:
    return service_days if service_days is not None else provider_days


def _refuse(
    why: Ineligible, reason: str, window_ends_at: datetime | None = None
) -> Eligibility:
    return Eligibility(why, reason, window_ends_at)


def refill_eligibility(
    *,
    service_id: int | None,
    terms: RefillTerms | None,
    status: OrderStatus | None,
    completed_at: datetime | None,
    refillable: bool | None,
    now: datetime,
) -> Eligibility:
    """Whether the order may get a refill now. ``terms`` is None when the service is not
    in the provider's catalog (or the order's service is not known at all)."""
    if service_id is None:
        return _refuse(
            Ineligible.SERVICE_UNKNOWN,
            "the order's service is unknown (give it with `tracker track --service`)",
        )
    if terms is None:
        return _refuse(
            Ineligible.SERVICE_UNKNOWN,
            f"service {service_id} is not in the provider's catalog (run `tracker provider sync`)",
        )
    if not terms.refill:
        return _refuse(Ineligible.NO_REFILL, f"service {service_id} has no refill")
    if refillable is False:
        return _refuse(
            Ineligible.DISABLED, "the provider said refill is disabled for this order"
        )
    if status not in COMPLETION_STATUSES or completed_at is None:
        shown = status.value if status is not None else "not polled yet"
        return _refuse(
            Ineligible.NOT_COMPLETED, f"the order is not completed (status: {shown})"
        )
    ends_at = completed_at + timedelta(days=terms.window_days)
    if now > ends_at:
        return _refuse(
            Ineligible.WINDOW_CLOSED,
            f"the guarantee window ({terms.window_days} days from completion) closed at "
            f"{ends_at.isoformat()}",
            ends_at,
        )
    return Eligibility(None, None, ends_at)


# --- the refill status state machine ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefillState:
    status: RefillStatus | None = None
    raw_status: str | None = None
    last_observed_at: datetime | None = None
    consecutive_not_found: int = 0
    unchanged_polls: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL_REFILL_STATUSES


@dataclass(frozen=True, slots=True)
class RefillTransition:
    """One row of ``refill_events``."""

    from_status: RefillStatus | None
    to_status: RefillStatus
    raw_status: str | None


@dataclass(frozen=True, slots=True)
class RefillOutcome:
    state: RefillState
    transition: RefillTransition | None
    stale: bool = False


def apply_refill_observation(
    state: RefillState,
    result: RefillReport | PerIdError | None,
    observed_at: datetime,
    *,
    not_found_after: int,
) -> RefillOutcome:
    """Apply one provider answer about one refill, requested at ``observed_at``.

    ``result`` is None when the answer left the refill out (or the call for it failed).
    """
    if state.last_observed_at is not None and observed_at < state.last_observed_at:
        return RefillOutcome(state, None, stale=True)
    learned_nothing = replace(
        state, last_observed_at=observed_at, unchanged_polls=state.unchanged_polls + 1
    )
    if isinstance(result, RefillReport):
        if result.status == state.status:
            return RefillOutcome(
                replace(learned_nothing, consecutive_not_found=0), None
            )
        new_state = RefillState(result.status, result.raw_status, observed_at, 0, 0)
        return RefillOutcome(
            new_state, RefillTransition(state.status, result.status, result.raw_status)
        )
    if result is not None and result.means_not_found:
        misses = state.consecutive_not_found + 1
        if misses < not_found_after or state.status is RefillStatus.NOT_FOUND:
            return RefillOutcome(
                replace(learned_nothing, consecutive_not_found=misses), None
            )
        new_state = replace(
            state,
            status=RefillStatus.NOT_FOUND,
            last_observed_at=observed_at,
            consecutive_not_found=misses,
            unchanged_polls=0,
        )
        transition = RefillTransition(
            state.status, RefillStatus.NOT_FOUND, state.raw_status
        )
        return RefillOutcome(new_state, transition)
    return RefillOutcome(learned_nothing, None)


# --- attempts and what follows them -------------------------------------------------------


class AttemptOutcome(StrEnum):
    """What one ``refill`` call came to; stored in ``refill_attempts.outcome``."""

    ACCEPTED = "accepted"
    ALREADY_ACTIVE = "already_active"
    RETRY_LATER = "retry_later"
    DISABLED = "disabled"
    WINDOW_EXPIRED = "window_expired"
    NOT_FOUND = "not_found"
    REFUSED = "refused"
    BAD_REQUEST = "bad_request"
    RATE_LIMITED = "rate_limited"
    KEY_REJECTED = "key_rejected"
    # Written before the call: sent, no answer recorded yet. Found by a later run, it is
    # an answer lost (the worker or the database failed after the call).
    SENT = "sent"
    # No usable answer (timeout, dropped connection, 5xx, garbled body): the provider may
    # or may not have created a refill.
    NO_ANSWER = "no_answer"
    # Never reached the provider (no connection, or the rate limit kept it back).
    NOT_SENT = "not_sent"
    # Accepted, with a refill ID we cannot store or poll.
    BAD_REFILL_ID = "bad_refill_id"


# Outcomes after which the provider may have created a refill we never heard of.
AMBIGUOUS_OUTCOMES = frozenset({AttemptOutcome.SENT, AttemptOutcome.NO_ANSWER})
# Outcomes that count as a refill sent: they start the order's refill cool-down.
SENT_OUTCOMES = frozenset({AttemptOutcome.ACCEPTED, AttemptOutcome.BAD_REFILL_ID, *AMBIGUOUS_OUTCOMES})
# Outcomes after which a refill may run that the tracker cannot follow to its end.
UNFOLLOWED_OUTCOMES = frozenset({AttemptOutcome.BAD_REFILL_ID, *AMBIGUOUS_OUTCOMES})


@dataclass(frozen=True, slots=True)
class Accepted:
    pass


@dataclass(frozen=True, slots=True)
class RetryAt:
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str
    # The provider said refill is disabled: the order is marked not refillable.
    not_refillable: bool = False
    # The call went out and its answer was lost: a refill may exist.
    answer_unknown: bool = False


Decision = Accepted | RetryAt | GiveUp

ANSWER_UNKNOWN = (
    "sent, answer unknown: the provider may have created a refill whose ID we cannot "
    "learn, so the call is not repeated"
)

GIVE_UP_REASONS = {
    AttemptOutcome.DISABLED: "the provider said refill is disabled for this order",
    AttemptOutcome.WINDOW_EXPIRED: "the provider said the refill period has expired",
    AttemptOutcome.NOT_FOUND: "the provider does not know the order",
    AttemptOutcome.BAD_REQUEST: "the provider did not understand the refill request",
    AttemptOutcome.ALREADY_ACTIVE: "the provider already has a refill of this order in progress",
    AttemptOutcome.BAD_REFILL_ID: "the provider accepted the refill but answered a refill ID that cannot be followed",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    cap_seconds: float


def decide_after_attempt(
    outcome: AttemptOutcome,
    *,
    attempts_made: int,
    window_ends_at: datetime | None,
    now: datetime,
    policy: RetryPolicy,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """What follows an attempt. ``attempts_made`` counts this one."""
    if outcome is AttemptOutcome.ACCEPTED:
        return Accepted()
    if outcome in AMBIGUOUS_OUTCOMES:
        return GiveUp(ANSWER_UNKNOWN, answer_unknown=True)
    reason = GIVE_UP_REASONS.get(outcome)
    if reason is not None:
        return GiveUp(reason, not_refillable=outcome is AttemptOutcome.DISABLED)
    if attempts_made >= policy.max_attempts:
        return GiveUp(f"no refill accepted after {attempts_made} attempts (the cap)")
    if outcome in (AttemptOutcome.RATE_LIMITED, AttemptOutcome.NOT_SENT) and retry_after is not None:
        # The provider (or our own rate limit) said when: come back then, not later.
        wait = retry_after
    else:
        wait = failure_backoff(attempts_made, base=policy.base_seconds, cap=policy.cap_seconds, rng=rng)
    at = now + timedelta(seconds=wait)
    if window_ends_at is not None and at > window_ends_at:
        return GiveUp("the guarantee window closes before the next attempt")
    return RetryAt(at)


# --- the refill cool-down ------------------------------------------------------------------


def cooldown_hours(service_hours: float | None, provider_hours: float | None, default_hours: float) -> float:
    """The refill cool-down of an order's service: the service's own, else its provider's,
    else the default. Most panels allow one refill per order per day."""
    for hours in (service_hours, provider_hours):
        if hours is not None:
            return hours
    return default_hours


def may_send_refill_at(
    *, last_sent_at: datetime | None, cooldown_hours: float, refill_in_flight: bool, now: datetime, recheck: timedelta
) -> datetime:
    """When the next ``refill`` for an order may go out: at once, at the end of the
    cool-down after the last refill sent, or, while a refill is still running past its
    cool-down, after ``recheck``."""
    at = now
    if last_sent_at is not None:
        at = max(at, last_sent_at + timedelta(hours=cooldown_hours))
    if refill_in_flight and at <= now:
        at = now + recheck
    return at


# --- a drop: the same one, or a new one ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefillsOfOrder:
    """What a drop report needs to know of an order's refills."""

    # A request not ended yet: waiting to go out, being retried, or its call out now.
    open_request_id: int | None = None
    # The provider's ID of an accepted refill the tracker has not seen end yet.
    running_refill: str | None = None
    # The last ``refill`` call that may have created a refill: the cool-down runs from it.
    last_sent_at: datetime | None = None
    # The last such call whose refill cannot be followed (its answer lost, or an ID that
    # cannot be polled): nobody can tell when that refill ends.
    last_unfollowed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SameDrop:
    """The drop is the one a refill in flight answers: recorded, and opens nothing."""

    reason: str


@dataclass(frozen=True, slots=True)
class NewDrop:
    """A drop after the order's last refill ended: one request, due at ``due_at`` (now,
    or when the cool-down after the last refill sent ends)."""

    due_at: datetime


DropVerdict = SameDrop | NewDrop


def drop_verdict(refills: RefillsOfOrder, *, cooldown_hours: float, now: datetime) -> DropVerdict:
    """One drop, one refill. A drop reported while the order's refill request is open or
    its refill still runs is the drop that refill answers. A refill whose answer was lost
    (or whose ID cannot be polled) may run unseen: it counts as running until its
    cool-down ends. Only a drop after the last refill ended is a new one, and its refill
    waits for the cool-down's end."""
    if refills.open_request_id is not None:
        return SameDrop(f"refill request {refills.open_request_id} of this order is already open: the same drop")
    if refills.running_refill is not None:
        return SameDrop(f"refill {refills.running_refill} of this order is still running: the same drop")
    cooldown = timedelta(hours=cooldown_hours)
    if refills.last_unfollowed_at is not None and now < refills.last_unfollowed_at + cooldown:
        return SameDrop(
            f"a refill of this order went out at {refills.last_unfollowed_at.isoformat()} and its answer is "
            f"unknown, so it may still be running: the same drop until its cool-down ends at "
            f"{(refills.last_unfollowed_at + cooldown).isoformat()}"
        )
    if refills.last_sent_at is None:
        return NewDrop(now)
    return NewDrop(max(now, refills.last_sent_at + cooldown))


# --- drops, auto-refill --------------------------------------------------------------------


def expected_count(
    start_count: int | None, quantity: int | None, remains: int | None
) -> int | None:
    """The target's count once the order delivered: start count plus what was delivered
    (``quantity - remains``; a negative remains is an over-delivery). None when unknown
    or when nothing is known to have been delivered, so no drop can be judged."""
    if start_count is None or quantity is None or remains is None:
        return None
    delivered = quantity - remains
    return start_count + delivered if delivered > 0 else None


def auto_refill_hours(
    service_hours: float | None,
    provider_hours: float | None,
    default_hours: float | None,
) -> float | None:
    """The scheduled refill interval: the service's, else the provider's, else the
    default. 0 at any level switches the policy off there. None: no policy."""
    for hours in (service_hours, provider_hours, default_hours):
        if hours is not None:
            return hours if hours > 0 else None
    return None


def next_auto_refill(
    *,
    completed_at: datetime,
    scheduled_at: datetime | None,
    every_hours: float,
    now: datetime,
) -> tuple[bool, datetime]:
    """Whether a scheduled refill is due now, and when the following one is.

    The first one comes ``every_hours`` after completion; then one every ``every_hours``.
    """
    step = timedelta(hours=every_hours)
    due_at = scheduled_at if scheduled_at is not None else completed_at + step
    if due_at > now:
        return False, due_at
    return True, now + step
