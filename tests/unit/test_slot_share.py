"""How the dispatcher shares the workers' poll slots between providers (pure rules)."""

from __future__ import annotations

from tracker.config import Settings
from tracker.polling.dispatch import LARGEST_TASK_CALLS, TASKS_PER_ROUND, UNLIMITED, SlotShare, _calls_per_task

SLOW, FAST, TINY = 1, 2, 3


def test_without_announced_capacity_only_the_rate_budget_applies() -> None:
    assert SlotShare(None, {SLOW: 50}).allowed(SLOW) == UNLIMITED


def test_a_lone_provider_may_take_every_slot() -> None:
    share = SlotShare(4, {SLOW: 0}, due={SLOW}, wanting={SLOW})
    assert share.allowed(SLOW) == 4


def test_a_provider_leaves_a_slot_for_each_other_provider_with_due_rows_and_nothing_in_flight() -> None:
    share = SlotShare(4, {SLOW: 0, FAST: 0, TINY: 0}, due={SLOW, FAST, TINY}, wanting={SLOW})
    assert share.allowed(SLOW) == 2
    share.took(SLOW, 2, 2)
    # The others still find a slot each.
    assert share.allowed(FAST) == 1
    share.took(FAST, 1, 1)
    assert share.allowed(TINY) == 1


def test_a_provider_with_nothing_in_flight_gets_a_free_slot_even_when_others_are_waiting() -> None:
    # Three providers with work, two slots: whoever is served first is not locked out by
    # the slots kept for the other two.
    share = SlotShare(2, {SLOW: 0, FAST: 0, TINY: 0}, due={SLOW, FAST, TINY}, wanting={SLOW, FAST, TINY})
    assert share.allowed(FAST) == 1


def test_slots_are_split_evenly_between_providers_still_wanting_tasks() -> None:
    share = SlotShare(4, {SLOW: 0, FAST: 0}, due={SLOW, FAST}, wanting={SLOW, FAST})
    assert share.allowed(SLOW) == 2
    share.took(SLOW, 2, 2)
    assert share.allowed(SLOW) == 0
    assert share.allowed(FAST) == 2


def test_a_provider_that_took_less_than_allowed_leaves_its_share_to_the_others() -> None:
    share = SlotShare(4, {SLOW: 0, TINY: 0}, due={SLOW, TINY}, wanting={SLOW, TINY})
    share.took(TINY, 1, share.allowed(TINY))
    assert TINY not in share.wanting
    # Now SLOW may use what TINY does not: all but TINY's one.
    assert share.allowed(SLOW) == 3


def test_a_provider_holding_more_than_its_share_gets_nothing_more() -> None:
    share = SlotShare(2, {SLOW: 2, FAST: 0}, due={SLOW, FAST}, wanting={SLOW, FAST})
    assert share.allowed(SLOW) == 0
    # No slot is free: the other provider waits for one of SLOW's tasks to end.
    assert share.allowed(FAST) == 0


def test_a_provider_held_to_few_tasks_gets_larger_ones() -> None:
    settings = Settings.from_env({})
    assert _calls_per_task(45, 1, 20.0, settings) == 45
    assert _calls_per_task(30, 2, 20.0, settings) == 15
    # Never below the usual size, never above the largest.
    assert _calls_per_task(3, 2, 20.0, settings) == settings.calls_per_poll_task
    assert _calls_per_task(10_000, 1, 1000.0, settings) == LARGEST_TASK_CALLS
    assert _calls_per_task(10_000, TASKS_PER_ROUND, 1000.0, settings) == settings.calls_per_poll_task
    # A slow rate: the task's calls fit in a quarter of the soft time limit (100 s).
    assert _calls_per_task(90, 1, 1.0, settings) == 25
