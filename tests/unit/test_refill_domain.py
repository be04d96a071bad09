"""The refill domain, as pure functions: eligibility and the window, the refill status
state machine, attempt classification and retry decisions, drops and auto-refill."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.core.refills import (
    Accepted,
    AttemptOutcome,
    Decision,
    Eligibility,
    GiveUp,
    Ineligible,
    NewDrop,
    RefillsOfOrder,
    RefillState,
    RefillTerms,
    RefillTransition,
    RetryAt,
    RetryPolicy,
    SENT_OUTCOMES,
    UNFOLLOWED_OUTCOMES,
    SameDrop,
    apply_refill_observation,
    auto_refill_hours,
    cooldown_hours,
    decide_after_attempt,
    drop_verdict,
    expected_count,
    may_send_refill_at,
    next_auto_refill,
    refill_eligibility,
    window_days,
)
from tracker.core.status import OrderStatus, RefillStatus
from tracker.apiv2.errors import (
    HTTPError,
    IncorrectRequest,
    InsecureProviderURL,
    InsufficientFunds,
    InvalidKey,
    NotJSON,
    NotSent,
    ProviderError,
    ProviderRefused,
    ProviderTimeout,
    RateLimited,
    TransportError,
    UnusableRefillId,
)
from tracker.apiv2.messages import outcome_of_error
from tracker.apiv2.types import ItemError, RefillReport

T0 = datetime(2026, 1, 1, tzinfo=UTC)
K = 3
POLICY = RetryPolicy(max_attempts=5, base_seconds=60, cap_seconds=3600)
TERMS = RefillTerms(service_id=1, refill=True, window_days=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def eligibility(**overrides: Any) -> Eligibility:
    arguments: dict[str, Any] = {
        "service_id": 1,
        "terms": TERMS,
        "status": OrderStatus.COMPLETED,
        "completed_at": T0,
        "refillable": None,
        "now": at(3600),
    }
    arguments.update(overrides)
    return refill_eligibility(**arguments)


# --- eligibility ---------------------------------------------------------------------------


def test_a_completed_order_of_a_refill_service_inside_the_window_is_eligible() -> None:
    result = eligibility()
    assert result.eligible
    assert result.reason is None
    assert result.window_ends_at == T0 + timedelta(days=30)


def test_partial_orders_are_eligible_too() -> None:
    assert eligibility(status=OrderStatus.PARTIAL).eligible


@pytest.mark.parametrize(
    ("overrides", "why", "words"),
    [
        ({"service_id": None, "terms": None}, Ineligible.SERVICE_UNKNOWN, "--service"),
        ({"terms": None}, Ineligible.SERVICE_UNKNOWN, "not in the provider's catalog"),
        ({"terms": RefillTerms(1, False, 30)}, Ineligible.NO_REFILL, "has no refill"),
        ({"refillable": False}, Ineligible.DISABLED, "disabled"),
        ({"status": OrderStatus.IN_PROGRESS}, Ineligible.NOT_COMPLETED, "In progress"),
        ({"status": OrderStatus.CANCELED}, Ineligible.NOT_COMPLETED, "Canceled"),
        (
            {"status": None, "completed_at": None},
            Ineligible.NOT_COMPLETED,
            "not polled yet",
        ),
        (
            {"now": T0 + timedelta(days=30, seconds=1)},
            Ineligible.WINDOW_CLOSED,
            "30 days",
        ),
    ],
)
def test_each_reason_to_refuse_a_refill_is_named(
    overrides: dict[str, object], why: Ineligible, words: str
) -> None:
    result = eligibility(**overrides)
    assert not result.eligible
    assert result.ineligible is why
    assert result.reason is not None and words in result.reason


def test_the_window_ends_exactly_window_days_after_completion() -> None:
    assert eligibility(now=T0 + timedelta(days=30)).eligible
    assert not eligibility(terms=RefillTerms(1, True, 0), now=at(1)).eligible


def test_a_service_window_overrides_the_providers() -> None:
    assert window_days(None, 30) == 30
    assert window_days(7, 30) == 7
    assert window_days(0, 30) == 0


# --- the refill status state machine -------------------------------------------------------


def report(status: RefillStatus) -> RefillReport:
    return RefillReport(status=status, raw_status=status.value.lower())


def test_first_answer_records_a_transition_from_nothing() -> None:
    outcome = apply_refill_observation(
        RefillState(), report(RefillStatus.PENDING), at(0), not_found_after=K
    )
    assert outcome.transition is not None
    assert outcome.transition.from_status is None
    assert outcome.transition.to_status is RefillStatus.PENDING
    assert outcome.state.raw_status == "pending"
    assert not outcome.state.final


def test_the_same_answer_twice_records_nothing_the_second_time() -> None:
    first = apply_refill_observation(
        RefillState(), report(RefillStatus.IN_PROGRESS), at(0), not_found_after=K
    )
    again = apply_refill_observation(
        first.state, report(RefillStatus.IN_PROGRESS), at(5), not_found_after=K
    )
    assert again.transition is None
    assert again.state.unchanged_polls == 1
    assert again.state.last_observed_at == at(5)


def test_a_stale_answer_is_ignored() -> None:
    done = apply_refill_observation(
        RefillState(), report(RefillStatus.COMPLETED), at(10), not_found_after=K
    )
    late = apply_refill_observation(
        done.state, report(RefillStatus.PENDING), at(5), not_found_after=K
    )
    assert late.stale
    assert late.transition is None
    assert late.state == done.state


@pytest.mark.parametrize(
    "status", [RefillStatus.COMPLETED, RefillStatus.REJECTED, RefillStatus.CANCELED]
)
def test_final_refill_statuses_stop_polling(status: RefillStatus) -> None:
    outcome = apply_refill_observation(
        RefillState(), report(status), at(0), not_found_after=K
    )
    assert outcome.state.final


def test_unknown_and_pending_statuses_keep_polling() -> None:
    for status in (
        RefillStatus.PENDING,
        RefillStatus.IN_PROGRESS,
        RefillStatus.UNKNOWN,
    ):
        assert not apply_refill_observation(
            RefillState(), report(status), at(0), not_found_after=K
        ).state.final


def test_not_found_only_after_k_consecutive_answers() -> None:
    state = apply_refill_observation(
        RefillState(), report(RefillStatus.PENDING), at(0), not_found_after=K
    ).state
    missing = ItemError("Refill not found")
    for n in range(1, K):
        outcome = apply_refill_observation(state, missing, at(n), not_found_after=K)
        assert outcome.transition is None
        assert outcome.state.consecutive_not_found == n
        state = outcome.state
    outcome = apply_refill_observation(state, missing, at(K), not_found_after=K)
    assert (
        outcome.transition is not None
        and outcome.transition.to_status is RefillStatus.NOT_FOUND
    )
    assert outcome.transition.from_status is RefillStatus.PENDING
    assert outcome.state.final
    # Once Not found, further misses add nothing.
    assert (
        apply_refill_observation(
            outcome.state, missing, at(K + 1), not_found_after=K
        ).transition
        is None
    )


def test_a_real_answer_resets_the_not_found_count() -> None:
    state = apply_refill_observation(
        RefillState(), ItemError("Incorrect refill ID"), at(0), not_found_after=K
    ).state
    assert state.consecutive_not_found == 1
    state = apply_refill_observation(
        state, report(RefillStatus.PENDING), at(1), not_found_after=K
    ).state
    assert state.consecutive_not_found == 0


def test_other_item_errors_and_missing_entries_teach_nothing() -> None:
    pending = apply_refill_observation(
        RefillState(), report(RefillStatus.PENDING), at(0), not_found_after=K
    ).state
    for result in (ItemError("Something odd"), None):
        outcome = apply_refill_observation(pending, result, at(1), not_found_after=K)
        assert outcome.transition is None
        assert outcome.state.status is RefillStatus.PENDING
        assert outcome.state.consecutive_not_found == 0


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=50),
            st.sampled_from([*RefillStatus, None]),
        ),
        max_size=30,
    )
)
def test_replaying_any_answers_records_a_consistent_chain(
    answers: list[tuple[int, RefillStatus | None]],
) -> None:
    """Whatever order answers arrive in, each transition starts where the last one ended,
    and applying everything a second time adds no transition."""
    state = RefillState()
    transitions: list[RefillTransition] = []
    for seconds, status in answers:
        result = report(status) if status is not None else ItemError("Refill not found")
        outcome = apply_refill_observation(
            state, result, at(seconds), not_found_after=K
        )
        if outcome.transition is not None:
            transitions.append(outcome.transition)
        state = outcome.state
    for before, after in pairwise(transitions):
        assert after.from_status is before.to_status
        assert after.from_status is not after.to_status
    last_time = max((seconds for seconds, _ in answers), default=0)
    replay = apply_refill_observation(state, None, at(last_time), not_found_after=K)
    assert replay.transition is None


# --- attempts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ProviderRefused("refill", "Too early for refill, try again later"),
            AttemptOutcome.RETRY_LATER,
        ),
        (
            ProviderRefused("refill", "Order is not completed yet"),
            AttemptOutcome.RETRY_LATER,
        ),
        (
            ProviderRefused("refill", "You have active order with this link"),
            AttemptOutcome.RETRY_LATER,
        ),
        (
            ProviderRefused("refill", "Refill is disabled for this service"),
            AttemptOutcome.DISABLED,
        ),
        (
            ProviderRefused("refill", "Refill already in progress"),
            AttemptOutcome.ALREADY_ACTIVE,
        ),
        (
            ProviderRefused("refill", "Refill period expired"),
            AttemptOutcome.WINDOW_EXPIRED,
        ),
        (ProviderRefused("refill", "Incorrect order ID"), AttemptOutcome.NOT_FOUND),
        (ProviderRefused("refill", "Something new"), AttemptOutcome.REFUSED),
        (InsufficientFunds("refill", "Not enough funds"), AttemptOutcome.REFUSED),
        (IncorrectRequest("refill", "Incorrect request"), AttemptOutcome.BAD_REQUEST),
        (InvalidKey("refill", "Invalid API key"), AttemptOutcome.KEY_REJECTED),
        (RateLimited("refill", "slow down", 30.0), AttemptOutcome.RATE_LIMITED),
        (HTTPError("refill", 502, "Bad Gateway"), AttemptOutcome.NO_ANSWER),
        (ProviderTimeout("refill", "read timed out"), AttemptOutcome.NO_ANSWER),
        (TransportError("refill", "connection reset"), AttemptOutcome.NO_ANSWER),
        (NotJSON("refill", "truncated", '{"refi'), AttemptOutcome.NO_ANSWER),
        (NotSent("refill", "connection refused"), AttemptOutcome.NOT_SENT),
        (InsecureProviderURL("refill", "plain http"), AttemptOutcome.NOT_SENT),
        (UnusableRefillId("refill", "unusable refill ID", "x" * 80), AttemptOutcome.BAD_REFILL_ID),
    ],
)
def test_each_failure_is_classified(
    error: ProviderError, expected: AttemptOutcome
) -> None:
    assert outcome_of_error(error) is expected


def decide(outcome: AttemptOutcome, **overrides: Any) -> Decision:
    arguments: dict[str, Any] = {
        "attempts_made": 1,
        "window_ends_at": at(86400),
        "now": at(0),
        "policy": POLICY,
        "rng": random.Random(5),
    }
    arguments.update(overrides)
    return decide_after_attempt(outcome, **arguments)


def test_an_accepted_refill_stops_the_retries() -> None:
    assert decide(AttemptOutcome.ACCEPTED) == Accepted()


@pytest.mark.parametrize(
    "outcome",
    [
        AttemptOutcome.RETRY_LATER,
        AttemptOutcome.REFUSED,
        AttemptOutcome.KEY_REJECTED,
        AttemptOutcome.NOT_SENT,
    ],
)
def test_answers_proving_nothing_was_done_are_retried_with_growing_jittered_waits(
    outcome: AttemptOutcome,
) -> None:
    waits = []
    for attempt in range(1, 5):
        decision = decide(outcome, attempts_made=attempt)
        assert isinstance(decision, RetryAt)
        waits.append((decision.at - at(0)).total_seconds())
        step = min(POLICY.cap_seconds, POLICY.base_seconds * 2 ** (attempt - 1))
        assert step / 2 <= waits[-1] <= step
    assert waits[-1] > waits[0]


def test_jitter_spreads_retries_of_requests_that_failed_together() -> None:
    rng = random.Random(9)
    decisions = [
        decide(AttemptOutcome.RETRY_LATER, attempts_made=3, rng=rng) for _ in range(20)
    ]
    times = {decision.at for decision in decisions if isinstance(decision, RetryAt)}
    assert len(times) > 10


def test_a_429_comes_back_at_its_retry_after_not_later() -> None:
    decision = decide(AttemptOutcome.RATE_LIMITED, retry_after=2.0, attempts_made=4)
    assert isinstance(decision, RetryAt)
    assert decision.at == at(2)


@pytest.mark.parametrize("outcome", [AttemptOutcome.NO_ANSWER, AttemptOutcome.SENT])
def test_a_lost_answer_is_never_retried(outcome: AttemptOutcome) -> None:
    decision = decide(outcome, attempts_made=1)
    assert isinstance(decision, GiveUp) and decision.answer_unknown
    assert "answer unknown" in decision.reason


def test_an_unusable_refill_id_ends_the_request_visibly() -> None:
    decision = decide(AttemptOutcome.BAD_REFILL_ID)
    assert isinstance(decision, GiveUp) and "cannot be followed" in decision.reason
    assert AttemptOutcome.BAD_REFILL_ID in SENT_OUTCOMES


def test_the_cool_down_comes_from_the_service_then_the_provider_then_the_default() -> None:
    assert cooldown_hours(None, None, 24.0) == 24.0
    assert cooldown_hours(None, 12.0, 24.0) == 12.0
    assert cooldown_hours(0.0, 12.0, 24.0) == 0.0


def test_no_refill_goes_out_inside_the_cool_down_or_while_one_runs() -> None:
    recheck = timedelta(minutes=5)
    assert may_send_refill_at(last_sent_at=None, cooldown_hours=24, refill_in_flight=False, now=at(0), recheck=recheck) == at(0)
    assert may_send_refill_at(
        last_sent_at=at(-3600), cooldown_hours=24, refill_in_flight=False, now=at(0), recheck=recheck
    ) == at(-3600) + timedelta(hours=24)
    assert may_send_refill_at(
        last_sent_at=at(-100_000), cooldown_hours=24, refill_in_flight=False, now=at(0), recheck=recheck
    ) == at(0)
    # A refill still running after its cool-down: look again later.
    assert may_send_refill_at(
        last_sent_at=at(-100_000), cooldown_hours=24, refill_in_flight=True, now=at(0), recheck=recheck
    ) == at(0) + recheck


# --- one drop, one refill -------------------------------------------------------------------

HOUR = 3600


def verdict(refills: RefillsOfOrder, now: float, cooldown: float = 24) -> SameDrop | NewDrop:
    return drop_verdict(refills, cooldown_hours=cooldown, now=at(now))


def test_a_first_drop_opens_a_request_due_at_once() -> None:
    assert verdict(RefillsOfOrder(), 0) == NewDrop(at(0))


def test_a_drop_while_the_request_is_open_or_the_refill_runs_is_the_same_drop() -> None:
    waiting = verdict(RefillsOfOrder(open_request_id=7), 0)
    assert isinstance(waiting, SameDrop) and "request 7" in waiting.reason
    # Accepted and running, however long after it went out, cool-down over or not.
    for now in (10, 2 * HOUR, 30 * HOUR):
        running = verdict(RefillsOfOrder(running_refill="r-9", last_sent_at=at(0)), now)
        assert isinstance(running, SameDrop) and "r-9" in running.reason and "still running" in running.reason


def test_a_drop_after_the_refill_ended_waits_for_the_cooldowns_end() -> None:
    ended = RefillsOfOrder(last_sent_at=at(0))
    assert verdict(ended, 2 * HOUR) == NewDrop(at(24 * HOUR))
    assert verdict(ended, 25 * HOUR) == NewDrop(at(25 * HOUR))
    assert verdict(ended, 2 * HOUR, cooldown=0) == NewDrop(at(2 * HOUR))


def test_a_refill_that_cannot_be_followed_counts_as_running_until_its_cooldown_ends() -> None:
    lost = RefillsOfOrder(last_sent_at=at(0), last_unfollowed_at=at(0))
    inside = verdict(lost, 23 * HOUR)
    assert isinstance(inside, SameDrop) and "answer is unknown" in inside.reason
    assert verdict(lost, 24 * HOUR) == NewDrop(at(24 * HOUR))
    # A followed refill sent after it: the cool-down runs from the later one.
    assert verdict(RefillsOfOrder(last_sent_at=at(30 * HOUR), last_unfollowed_at=at(0)), 31 * HOUR) == NewDrop(
        at(54 * HOUR)
    )


def test_only_refills_the_tracker_cannot_follow_are_unfollowed() -> None:
    assert UNFOLLOWED_OUTCOMES < SENT_OUTCOMES
    assert AttemptOutcome.ACCEPTED not in UNFOLLOWED_OUTCOMES


moments = st.integers(min_value=-100 * HOUR, max_value=100 * HOUR)


@given(
    open_request=st.none() | st.integers(min_value=1, max_value=10),
    running=st.none() | st.just("r-1"),
    sent=st.none() | moments,
    unfollowed_before=st.none() | st.integers(min_value=0, max_value=50 * HOUR),
    cooldown=st.floats(min_value=0, max_value=48),
    now=moments,
)
def test_a_drop_opens_a_request_only_when_no_refill_is_in_flight_and_never_inside_the_cooldown(
    open_request: int | None, running: str | None, sent: int | None, unfollowed_before: int | None, cooldown: float, now: int
) -> None:
    unfollowed = sent - unfollowed_before if sent is not None and unfollowed_before is not None else None
    refills = RefillsOfOrder(
        open_request_id=open_request,
        running_refill=running,
        last_sent_at=at(sent) if sent is not None else None,
        last_unfollowed_at=at(unfollowed) if unfollowed is not None else None,
    )
    result = verdict(refills, now, cooldown)
    span = timedelta(hours=cooldown)
    in_flight = (
        open_request is not None
        or running is not None
        or (unfollowed is not None and at(now) < at(unfollowed) + span)
    )
    assert isinstance(result, SameDrop) == in_flight
    if isinstance(result, NewDrop):
        assert result.due_at >= at(now)
        if sent is not None:
            assert result.due_at >= at(sent) + span
        assert result.due_at in (at(now), at(sent or 0) + span)


def test_the_attempt_cap_ends_the_retries() -> None:
    decision = decide(AttemptOutcome.RETRY_LATER, attempts_made=POLICY.max_attempts)
    assert isinstance(decision, GiveUp)
    assert "5 attempts" in decision.reason


def test_no_retry_is_scheduled_past_the_window() -> None:
    decision = decide(
        AttemptOutcome.RETRY_LATER, attempts_made=3, window_ends_at=at(30)
    )
    assert isinstance(decision, GiveUp)
    assert "window" in decision.reason


def test_refill_disabled_gives_up_and_marks_the_order_not_refillable() -> None:
    decision = decide(AttemptOutcome.DISABLED)
    assert isinstance(decision, GiveUp) and decision.not_refillable


@pytest.mark.parametrize(
    "outcome",
    [
        AttemptOutcome.WINDOW_EXPIRED,
        AttemptOutcome.NOT_FOUND,
        AttemptOutcome.BAD_REQUEST,
    ],
)
def test_answers_no_retry_can_change_give_up_at_once(outcome: AttemptOutcome) -> None:
    decision = decide(outcome)
    assert isinstance(decision, GiveUp) and not decision.not_refillable


def test_already_active_without_a_lost_answer_is_someone_elses_refill() -> None:
    decision = decide(AttemptOutcome.ALREADY_ACTIVE, attempts_made=2)
    assert isinstance(decision, GiveUp)
    assert "already" in decision.reason


# --- drops and auto-refill -----------------------------------------------------------------


def test_expected_count_is_start_plus_what_was_delivered() -> None:
    assert expected_count(1000, 500, 0) == 1500
    assert expected_count(1000, 500, 200) == 1300  # Partial: 300 delivered
    assert expected_count(1000, 500, -3) == 1503  # over-delivered
    assert expected_count(None, 500, 0) is None
    assert expected_count(1000, None, 0) is None
    # Nothing known to be delivered (the order was first seen already final): no judgement.
    assert expected_count(1000, 0, 0) is None


def test_auto_refill_interval_comes_from_the_service_then_provider_then_default() -> (
    None
):
    assert auto_refill_hours(None, None, None) is None
    assert auto_refill_hours(None, None, 24.0) == 24.0
    assert auto_refill_hours(None, 12.0, 24.0) == 12.0
    assert auto_refill_hours(6.0, 12.0, 24.0) == 6.0
    assert auto_refill_hours(0.0, 12.0, 24.0) is None  # off for this service
    assert auto_refill_hours(None, 0.0, 24.0) is None  # off for this provider


def test_the_first_scheduled_refill_comes_one_interval_after_completion() -> None:
    due, following = next_auto_refill(
        completed_at=T0, scheduled_at=None, every_hours=24, now=at(3600)
    )
    assert not due and following == T0 + timedelta(hours=24)
    due, following = next_auto_refill(
        completed_at=T0, scheduled_at=following, every_hours=24, now=at(86400 + 60)
    )
    assert due and following == at(86400 + 60) + timedelta(hours=24)
