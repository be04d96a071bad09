"""The order state machine, as pure functions; the properties run under hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.core.status import OrderStatus
from tracker.core.tracking import OrderState, apply_observation
from tracker.apiv2.types import ItemError, OrderReport

T0 = datetime(2026, 1, 1, tzinfo=UTC)
K = 3


def report(status: OrderStatus, remains: int | None = 100, charge: str | None = "1.5", start: int | None = 10) -> OrderReport:
    return OrderReport(
        status=status,
        raw_status=status.value,
        charge=Decimal(charge) if charge is not None else None,
        start_count=start,
        remains=remains,
        currency="USD",
    )


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_first_answer_records_a_transition_from_nothing() -> None:
    outcome = apply_observation(OrderState(), report(OrderStatus.PENDING), at(0), not_found_after=K)
    assert outcome.transition is not None
    assert outcome.transition.from_status is None
    assert outcome.transition.to_status is OrderStatus.PENDING
    assert outcome.state.status is OrderStatus.PENDING
    assert not outcome.state.final


def test_the_same_answer_twice_records_nothing_the_second_time() -> None:
    first = apply_observation(OrderState(), report(OrderStatus.IN_PROGRESS, remains=40), at(0), not_found_after=K)
    second = apply_observation(first.state, report(OrderStatus.IN_PROGRESS, remains=40), at(5), not_found_after=K)
    assert second.transition is None
    assert second.state.unchanged_polls == 1


def test_remains_change_without_status_change_is_recorded() -> None:
    first = apply_observation(OrderState(), report(OrderStatus.IN_PROGRESS, remains=40), at(0), not_found_after=K)
    second = apply_observation(first.state, report(OrderStatus.IN_PROGRESS, remains=20), at(5), not_found_after=K)
    assert second.transition is not None
    assert second.transition.from_status == second.transition.to_status == OrderStatus.IN_PROGRESS
    assert second.transition.remains == 20


def test_stale_answer_is_ignored() -> None:
    done = apply_observation(OrderState(), report(OrderStatus.COMPLETED, remains=0), at(10), not_found_after=K)
    late = apply_observation(done.state, report(OrderStatus.IN_PROGRESS, remains=50), at(5), not_found_after=K)
    assert late.stale
    assert late.transition is None
    assert late.state == done.state


def test_newer_answer_may_move_a_final_order_back_once() -> None:
    done = apply_observation(OrderState(), report(OrderStatus.COMPLETED, remains=0), at(10), not_found_after=K)
    back = apply_observation(done.state, report(OrderStatus.IN_PROGRESS, remains=5), at(20), not_found_after=K)
    again = apply_observation(back.state, report(OrderStatus.IN_PROGRESS, remains=5), at(30), not_found_after=K)
    assert back.transition is not None and back.transition.to_status is OrderStatus.IN_PROGRESS
    assert again.transition is None


def test_missing_fields_keep_previous_values() -> None:
    first = apply_observation(OrderState(), report(OrderStatus.IN_PROGRESS, charge="2.5"), at(0), not_found_after=K)
    second = apply_observation(first.state, report(OrderStatus.IN_PROGRESS, charge=None), at(5), not_found_after=K)
    assert second.transition is None
    assert second.state.charge == Decimal("2.5")


def test_not_found_only_after_k_consecutive_answers() -> None:
    state = apply_observation(OrderState(), report(OrderStatus.PENDING), at(0), not_found_after=K).state
    missing = ItemError("Incorrect order ID")
    for step in range(1, K):
        outcome = apply_observation(state, missing, at(step), not_found_after=K)
        assert outcome.transition is None
        assert not outcome.state.final
        state = outcome.state
    final = apply_observation(state, missing, at(K), not_found_after=K)
    assert final.transition is not None
    assert final.transition.to_status is OrderStatus.NOT_FOUND
    assert final.state.final


def test_a_real_answer_resets_the_not_found_counter() -> None:
    state = OrderState()
    missing = ItemError("Incorrect order ID")
    for step in range(K - 1):
        state = apply_observation(state, missing, at(step), not_found_after=K).state
    state = apply_observation(state, report(OrderStatus.PENDING), at(10), not_found_after=K).state
    assert state.consecutive_not_found == 0
    for step in range(K - 1):
        state = apply_observation(state, missing, at(20 + step), not_found_after=K).state
    assert state.status is OrderStatus.PENDING


def test_other_item_errors_and_absence_change_nothing() -> None:
    state = apply_observation(OrderState(), report(OrderStatus.PENDING), at(0), not_found_after=K).state
    for result in (ItemError("Internal error, try later"), None):
        outcome = apply_observation(state, result, at(5), not_found_after=K)
        assert outcome.transition is None
        assert outcome.state.status is OrderStatus.PENDING
        assert outcome.state.consecutive_not_found == 0


# --- properties -----------------------------------------------------------------------

LIFECYCLE = [
    report(OrderStatus.PENDING, remains=100),
    report(OrderStatus.IN_PROGRESS, remains=100),
    report(OrderStatus.IN_PROGRESS, remains=60),
    report(OrderStatus.IN_PROGRESS, remains=20),
    report(OrderStatus.COMPLETED, remains=0),
]


@st.composite
def delivered_answers(draw: st.DrawFn) -> list[tuple[datetime, OrderReport]]:
    """The answers of one order's life, each requested at its own time, then delivered
    duplicated and in any order (as retries and late workers do)."""
    length = draw(st.integers(min_value=1, max_value=len(LIFECYCLE)))
    timed = [(at(10 * index), LIFECYCLE[index]) for index in range(length)]
    extra = draw(st.lists(st.sampled_from(timed), max_size=6))
    return draw(st.permutations(timed + extra))


@settings(max_examples=300, deadline=None)
@given(delivered_answers())
def test_shuffled_and_duplicated_answers_end_in_the_newest_state(answers: list[tuple[datetime, OrderReport]]) -> None:
    state = OrderState()
    transitions = []
    for observed_at, answer in answers:
        outcome = apply_observation(state, answer, observed_at, not_found_after=K)
        state = outcome.state
        if outcome.transition is not None:
            transitions.append((observed_at, outcome.transition))
    newest_at, newest = max(answers, key=lambda pair: pair[0])
    assert state.status is newest.status
    assert state.remains == newest.remains
    assert state.last_observed_at == newest_at
    # Events move forward in time only, and no two consecutive events are the same.
    times = [moment for moment, _ in transitions]
    assert times == sorted(times) and len(set(times)) == len(times)
    for (_, earlier), (_, later) in zip(transitions, transitions[1:], strict=False):
        assert (earlier.to_status, earlier.remains) != (later.to_status, later.remains)
        assert later.from_status is earlier.to_status
    # Never backwards: the lifecycle index of recorded states only grows.
    order = [LIFECYCLE.index(next(r for r in LIFECYCLE if (r.status, r.remains) == (t.to_status, t.remains))) for _, t in transitions]
    assert order == sorted(order)


@settings(max_examples=200, deadline=None)
@given(st.permutations(LIFECYCLE), st.integers(min_value=1, max_value=4))
def test_reapplying_every_answer_adds_no_event(answers: list[OrderReport], repeats: int) -> None:
    state = OrderState()
    timed = [(at(index), answer) for index, answer in enumerate(answers)]
    first_pass = 0
    for observed_at, answer in timed:
        outcome = apply_observation(state, answer, observed_at, not_found_after=K)
        state = outcome.state
        first_pass += outcome.transition is not None
    for _ in range(repeats):
        for observed_at, answer in timed:
            outcome = apply_observation(state, answer, observed_at, not_found_after=K)
            assert outcome.transition is None
            state = outcome.state
    assert first_pass >= 1
