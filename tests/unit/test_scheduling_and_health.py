from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tracker.core.health import OPEN_CAP_SECONDS, CircuitState, Health, after_failure, after_rate_limited, batches_per_tick
from tracker.core.scheduling import draw_jitter, failure_backoff, poll_delay

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_poll_delay_doubles_every_three_unchanged_answers_up_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [poll_delay(n, base_interval=100, max_factor=8, jitter=draw_jitter(rng)) for n in range(15)]
    for n, delay in enumerate(delays):
        factor = min(8, 2 ** (n // 3))
        assert 100 * factor * 0.9 <= delay <= 100 * factor * 1.1
        assert delay != 100 * factor


def test_one_jitter_keeps_a_batch_in_step() -> None:
    jitter = draw_jitter(random.Random(3))
    same_age = {poll_delay(4, base_interval=60, max_factor=8, jitter=jitter) for _ in range(100)}
    assert len(same_age) == 1


def test_failure_backoff_grows_and_is_capped() -> None:
    rng = random.Random(2)
    assert 5 <= failure_backoff(1, base=10, cap=300, rng=rng) <= 10
    assert 20 <= failure_backoff(3, base=10, cap=300, rng=rng) <= 40
    assert 150 <= failure_backoff(30, base=10, cap=300, rng=rng) <= 300


def test_circuit_opens_after_threshold_and_half_opens_after_cool_down() -> None:
    health = Health()
    for _ in range(4):
        health = after_failure(health, NOW, threshold=5)
        assert health.state(NOW) is CircuitState.CLOSED
    health = after_failure(health, NOW, threshold=5)
    assert health.state(NOW) is CircuitState.OPEN
    assert batches_per_tick(health, NOW, rate_limit=10, tick_interval=5) == 0
    later = health.circuit_open_until + timedelta(seconds=1)  # type: ignore[operator]
    assert health.state(later) is CircuitState.HALF_OPEN
    assert batches_per_tick(health, later, rate_limit=10, tick_interval=5) == 1
    reopened = after_failure(health, later, threshold=5)
    assert reopened.circuit_open_until - later > health.circuit_open_until - NOW  # type: ignore[operator]


def test_rate_limit_cool_down_and_budget() -> None:
    health = after_rate_limited(Health(), NOW, retry_after=30)
    assert health.state(NOW + timedelta(seconds=29)) is CircuitState.OPEN
    assert health.consecutive_failures == 0
    assert batches_per_tick(Health(), NOW, rate_limit=4, tick_interval=5) == 20
    assert batches_per_tick(Health(paused=True), NOW, rate_limit=4, tick_interval=5) == 0


class _TopOfRange(random.Random):
    """Draws the top of every range, so a capped back-off shows as exactly the cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_poll_delay_stays_at_the_cap_after_a_million_unchanged_polls() -> None:
    # An order stuck In progress for months must not break its whole batch.
    for unchanged in (10**6, 10**9):
        assert poll_delay(unchanged, base_interval=60, max_factor=8, jitter=0.0) == 480


def test_failure_backoff_stays_at_the_cap_after_a_million_failures() -> None:
    for failures in (10**6, 10**9):
        assert failure_backoff(failures, base=300, cap=21600, rng=_TopOfRange()) == 21600


def test_circuit_cool_down_stays_at_the_cap_after_a_million_failures() -> None:
    for failures in (10**6, 10**9):
        health = after_failure(Health(consecutive_failures=failures), NOW, threshold=5)
        assert health.circuit_open_until == NOW + timedelta(seconds=OPEN_CAP_SECONDS)
        assert health.consecutive_failures == failures + 1
