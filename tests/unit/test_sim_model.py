"""The simulated provider's pure order model: determinism, monotonic timelines, stable
final states, cancels and refills."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.core.status import OrderStatus, RefillStatus
from tracker.sim.catalog import DEFAULT_CATALOG, catalog_by_id
from tracker.sim.model import (
    OrderBatch,
    Outcome,
    Plan,
    charge_for,
    make_plan,
    make_refill,
    natural_dropped,
    outstanding_drop,
    refill_restored_at,
    refill_status_at,
    refill_timeline,
    state_at,
    timeline,
)

SERVICES = catalog_by_id()
FOLLOWERS = SERVICES[1]  # refill + cancel
LIKES = SERVICES[3]  # no refill, no cancel

_STATUS_RANK = {
    OrderStatus.PENDING: 0,
    OrderStatus.IN_PROGRESS: 1,
    OrderStatus.COMPLETED: 2,
    OrderStatus.PARTIAL: 2,
    OrderStatus.CANCELED: 2,
}


_BASE_BATCH = OrderBatch(
    first_id=1,
    count=1_000_000,
    created_at=0.0,
    service_id=1,
    quantity=None,
    link="https://example.com/x",
)


def _batch(**overrides: Any) -> OrderBatch:
    return replace(_BASE_BATCH, **overrides)


def _plan(seed: int, order_id: int, **overrides: Any) -> Plan:
    batch = _batch(**overrides)
    return make_plan(seed, order_id, batch, SERVICES[batch.service_id], natural_drops=True)


def test_charge_is_rate_per_thousand_with_five_places() -> None:
    assert charge_for(Decimal("0.90"), 1000) == Decimal("0.90000")
    assert charge_for(Decimal("0.90"), 309) == Decimal("0.27810")
    assert str(charge_for(Decimal(8), 10)) == "0.08000"


@given(seed=st.integers(0, 2**32), order_id=st.integers(1, 10**9))
@settings(max_examples=200, deadline=None)
def test_same_seed_and_id_give_the_same_plan(seed: int, order_id: int) -> None:
    assert _plan(seed, order_id) == _plan(seed, order_id)


def test_different_seeds_give_different_plans() -> None:
    first = [_plan(1, order_id) for order_id in range(1, 201)]
    second = [_plan(2, order_id) for order_id in range(1, 201)]
    differing = sum(a != b for a, b in zip(first, second, strict=True))
    assert differing > 190


def test_default_plans_finish_in_two_to_ten_sim_minutes_with_a_realistic_outcome_mix() -> None:
    plans = [_plan(7, order_id) for order_id in range(1, 5001)]
    durations = [plan.final_at - plan.created_at for plan in plans]
    assert min(durations) >= 100.0
    assert max(durations) <= 600.0
    outcomes = Counter(plan.outcome for plan in plans)
    assert 0.75 < outcomes[Outcome.COMPLETED] / len(plans) < 0.85
    assert 0.08 < outcomes[Outcome.PARTIAL] / len(plans) < 0.16
    assert 0.05 < outcomes[Outcome.CANCELED] / len(plans) < 0.11
    assert all(3 <= len(plan.step_times) + 1 <= 5 for plan in plans)
    for plan in plans:
        assert FOLLOWERS.min <= plan.quantity <= FOLLOWERS.max


@given(seed=st.integers(0, 2**32), order_id=st.integers(1, 10**9), service=st.sampled_from([1, 3]))
@settings(max_examples=300, deadline=None)
def test_timelines_are_monotonic_and_end_in_the_stable_final_state(
    seed: int, order_id: int, service: int
) -> None:
    plan = _plan(seed, order_id, service_id=service)
    entries = timeline(plan, plan.final_at + 10_000)

    times = [at for at, _ in entries]
    assert times == sorted(times) and len(set(times)) == len(times)
    ranks = [_STATUS_RANK[state.status] for _, state in entries]
    assert ranks == sorted(ranks)
    remains = [state.remains for _, state in entries]
    assert remains == sorted(remains, reverse=True)
    assert entries[0][1].status is OrderStatus.PENDING or plan.start_at == plan.created_at
    assert [state.final for _, state in entries].count(True) == 1
    assert entries[-1][1].final

    final = entries[-1][1]
    for later in (plan.final_at, plan.final_at + 1, plan.final_at + 86_400 * 365):
        assert state_at(plan, later) == final
    # Everything observable between two timeline entries is the earlier entry.
    for (at, state), (next_at, _) in pairwise(entries):
        assert state_at(plan, (at + next_at) / 2).observable() == state.observable()


def test_final_states_match_the_outcome() -> None:
    completed = _plan(3, 11, outcome=Outcome.COMPLETED, quantity=1000)
    partial = _plan(3, 12, outcome=Outcome.PARTIAL, quantity=1000)
    canceled = _plan(3, 13, outcome=Outcome.CANCELED, quantity=1000)
    end = 10_000.0

    done = state_at(completed, end)
    assert done.status is OrderStatus.COMPLETED and done.remains <= 0
    assert done.charge == charge_for(FOLLOWERS.rate, 1000)

    part = state_at(partial, end)
    assert part.status is OrderStatus.PARTIAL and 0 < part.remains < 1000
    assert part.charge == charge_for(FOLLOWERS.rate, 1000 - part.remains)

    gone = state_at(canceled, end)
    assert gone.status is OrderStatus.CANCELED
    assert (gone.remains, gone.charge) == (1000, Decimal("0.00000"))
    assert [state.status for _, state in timeline(canceled, end)] == [
        OrderStatus.PENDING,
        OrderStatus.CANCELED,
    ]


def test_pending_shows_start_count_zero_then_the_real_one() -> None:
    plan = _plan(
        5, 99, outcome=Outcome.COMPLETED, pending_s=30.0, progress_s=60.0, start_count=4321
    )
    assert state_at(plan, 10.0).start_count == 0
    assert state_at(plan, 31.0).start_count == 4321
    assert state_at(plan, 31.0).status is OrderStatus.IN_PROGRESS


def test_overrides_fix_durations_quantity_and_start_count() -> None:
    plan = _plan(
        1, 5, quantity=500, pending_s=5.0, progress_s=20.0, start_count=10, created_at=100.0
    )
    assert (plan.quantity, plan.start_count) == (500, 10)
    assert (plan.start_at, plan.final_at) == (105.0, 125.0)


def test_a_cancel_while_pending_refunds_everything() -> None:
    plan = _plan(1, 42, outcome=Outcome.COMPLETED, pending_s=100.0, progress_s=100.0, quantity=200)
    state = state_at(plan, 60.0, cancel_at=50.0)
    assert state.final and state.status is OrderStatus.CANCELED
    assert (state.remains, state.charge, state.start_count) == (200, Decimal("0.00000"), 0)


def test_a_cancel_after_some_delivery_ends_partial_charged_for_the_delivered_part() -> None:
    plan = _plan(1, 43, outcome=Outcome.COMPLETED, pending_s=0.0, progress_s=100.0, quantity=200)
    cancel_at = 99.0  # inside the last remains step
    state = state_at(plan, 150.0, cancel_at)
    assert state.status is OrderStatus.PARTIAL
    delivered = 200 - state.remains
    assert 0 < delivered < 200
    assert state.charge == charge_for(FOLLOWERS.rate, delivered)
    assert timeline(plan, 150.0, cancel_at)[-1][0] == cancel_at


def test_a_cancel_that_comes_too_late_changes_nothing() -> None:
    plan = _plan(1, 44, outcome=Outcome.COMPLETED, pending_s=0.0, progress_s=100.0)
    assert state_at(plan, 500.0, cancel_at=150.0) == state_at(plan, 500.0)


def test_natural_drops_only_for_refill_services_and_after_completion() -> None:
    forced = _plan(1, 7, outcome=Outcome.COMPLETED, natural_drop=True, quantity=1000)
    assert forced.drop_at is not None and forced.drop_at > forced.final_at
    final = state_at(forced, forced.drop_at + 1)
    assert natural_dropped(forced, final, forced.drop_at - 1) == 0
    assert 1 <= natural_dropped(forced, final, forced.drop_at + 1) <= 100

    no_refill = _plan(1, 7, service_id=LIKES.service_id, natural_drop=True)
    assert no_refill.drop_at is None
    switched_off = _plan(1, 7, natural_drop=False)
    assert switched_off.drop_at is None
    share = sum(_plan(9, i, outcome=Outcome.COMPLETED).drop_at is not None for i in range(1, 2001))
    assert 300 < share < 500  # about 20 %


def test_refill_moves_pending_in_progress_completed_and_restores() -> None:
    refill = make_refill(1, 1, 10, requested_at=1000.0, restore=25, pending_s=10.0, progress_s=30.0)
    assert refill_status_at(refill, 1005.0) is RefillStatus.PENDING
    assert refill_status_at(refill, 1015.0) is RefillStatus.IN_PROGRESS
    assert refill_status_at(refill, 1040.0) is RefillStatus.COMPLETED
    assert refill_restored_at(refill, 1039.0) == 0
    assert refill_restored_at(refill, 1040.0) == 25
    assert [status for _, status in refill_timeline(refill, 2000.0)] == [
        RefillStatus.PENDING,
        RefillStatus.IN_PROGRESS,
        RefillStatus.COMPLETED,
    ]
    assert outstanding_drop(25, [refill], 2000.0) == 0


def test_refill_with_nothing_to_restore_is_rejected() -> None:
    refill = make_refill(1, 2, 10, requested_at=0.0, restore=0, pending_s=10.0, progress_s=30.0)
    assert refill_status_at(refill, 5.0) is RefillStatus.PENDING
    assert refill_status_at(refill, 10.0) is RefillStatus.REJECTED
    assert refill.final_at == 10.0
    assert refill_restored_at(refill, 100.0) == 0


@pytest.mark.parametrize("refill_id", [1, 2, 3, 500])
def test_refill_durations_are_deterministic(refill_id: int) -> None:
    first = make_refill(4, refill_id, 1, 0.0, 5)
    assert first == make_refill(4, refill_id, 1, 0.0, 5)
    assert 5.0 <= first.pending_s <= 30.0 and 20.0 <= first.progress_s <= 120.0


def test_the_catalog_covers_every_refill_and_cancel_combination() -> None:
    combos = {(service.refill, service.cancel) for service in DEFAULT_CATALOG}
    assert combos == {(True, True), (True, False), (False, True), (False, False)}
