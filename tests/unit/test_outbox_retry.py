"""When the outbox retries a failed delivery, and when it gives up: a time span from the
event's creation (or resend), not a number of attempts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tracker.core.outbox_events import DELIVERY_RETRY_CAP, next_delivery_attempt

CREATED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
THREE_DAYS = timedelta(days=3)


def attempts_until_given_up(retry_for: timedelta, max_attempts: int | None = None, seed: int = 1) -> tuple[int, datetime]:
    """Fail every delivery, trying again exactly when told: (attempts made, time of the last)."""
    rng = random.Random(seed)
    now, attempts = CREATED, 0
    while True:
        attempts += 1
        following = next_delivery_attempt(
            since=CREATED, attempts=attempts, now=now, retry_for=retry_for, max_attempts=max_attempts, rng=rng
        )
        if following is None:
            return attempts, now
        assert now < following <= CREATED + retry_for
        assert following - now <= timedelta(seconds=DELIVERY_RETRY_CAP)
        now = following


def test_a_failing_event_is_retried_for_the_whole_span_then_failed() -> None:
    for seed in range(20):
        attempts, last = attempts_until_given_up(THREE_DAYS, seed=seed)
        # The last attempt is made at the end of the span, not 10 attempts (about an hour) in.
        assert last == CREATED + THREE_DAYS
        assert attempts > 3 * 24  # at least one attempt an hour once the back-off is capped


def test_no_retry_once_the_span_has_passed() -> None:
    after = CREATED + THREE_DAYS + timedelta(seconds=1)
    assert next_delivery_attempt(since=CREATED, attempts=1, now=after, retry_for=THREE_DAYS) is None
    # A resent event gets a fresh span from its resend.
    resent = CREATED + timedelta(days=5)
    assert next_delivery_attempt(since=resent, attempts=1, now=resent, retry_for=THREE_DAYS) is not None


def test_back_off_doubles_with_jitter_up_to_the_cap() -> None:
    early = [
        next_delivery_attempt(since=CREATED, attempts=n, now=CREATED, retry_for=THREE_DAYS, rng=random.Random(n))
        for n in (1, 2, 3)
    ]
    delays = [(moment - CREATED).total_seconds() for moment in early if moment is not None]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and 20 <= delays[2] <= 40
    late = next_delivery_attempt(since=CREATED, attempts=40, now=CREATED, retry_for=THREE_DAYS)
    assert late is not None and DELIVERY_RETRY_CAP / 2 <= (late - CREATED).total_seconds() <= DELIVERY_RETRY_CAP


def test_max_attempts_when_set_ends_retries_earlier() -> None:
    attempts, last = attempts_until_given_up(THREE_DAYS, max_attempts=10)
    assert attempts == 10 and last < CREATED + THREE_DAYS
    attempts, last = attempts_until_given_up(timedelta(minutes=5), max_attempts=1000)
    assert last == CREATED + timedelta(minutes=5)


def test_settings_retry_span_and_deprecated_attempts() -> None:
    import pytest

    from tracker.config import ConfigError, Settings

    default = Settings.from_env({})
    assert (default.webhook_retry_for, default.webhook_max_attempts) == (259200.0, None)
    chosen = Settings.from_env({"TRACKER_WEBHOOK_RETRY_FOR": "3600", "TRACKER_WEBHOOK_MAX_ATTEMPTS": "10"})
    assert (chosen.webhook_retry_for, chosen.webhook_max_attempts) == (3600.0, 10)
    for bad in ({"TRACKER_WEBHOOK_RETRY_FOR": "3 days"}, {"TRACKER_WEBHOOK_MAX_ATTEMPTS": "0"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings.from_env(bad)
