"""Provider health: the circuit breaker and what one tick may send. Pure.

A provider's circuit opens after ``threshold`` consecutive failed calls (transport
errors, 5xx, unreadable answers). While it is open the dispatcher sends nothing. When the
cool-down has passed the circuit is half-open: one batch goes out as a probe; success
closes the circuit, failure re-opens it for twice as long (capped). An invalid key pauses
the provider: retrying every call with a bad key is how accounts get banned. Some panels
answer "Invalid API key" for a moment when their own database hiccups, though, so a paused
provider's key is probed with one ``balance`` call after ``key_probe_delay``; the
provider resumes when it works. A new key from the operator resumes it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from tracker.core.scheduling import doubling

OPEN_BASE_SECONDS = 30.0
OPEN_CAP_SECONDS = 1800.0
# 2**40 x any sane base is far beyond any cap: the exponent stops here, so the float
# never overflows however many probes a really bad key has failed.
_MAX_DOUBLINGS = 40


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Health:
    paused: bool = False
    consecutive_failures: int = 0
    circuit_open_until: datetime | None = None

    def state(self, now: datetime) -> CircuitState:
        if self.paused:
            return CircuitState.PAUSED
        if self.circuit_open_until is None:
            return CircuitState.CLOSED
        if now < self.circuit_open_until:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN


def after_failure(health: Health, now: datetime, *, threshold: int) -> Health:
    failures = health.consecutive_failures + 1
    if failures < threshold:
        return replace(health, consecutive_failures=failures)
    opened = OPEN_BASE_SECONDS * doubling(failures - threshold)
    return replace(
        health,
        consecutive_failures=failures,
        circuit_open_until=now + timedelta(seconds=min(OPEN_CAP_SECONDS, opened)),
    )


# A 429 without Retry-After: stay away this long.
RATE_LIMITED_DEFAULT_SECONDS = 5.0


def rate_limit_wait(retry_after: float | None) -> float:
    """Seconds to stay away after a 429: the provider's Retry-After when it gave one (it
    knows; waiting longer only delays every queued call), else a few seconds."""
    if retry_after is None:
        return RATE_LIMITED_DEFAULT_SECONDS
    return min(OPEN_CAP_SECONDS, max(0.5, retry_after))


def after_rate_limited(health: Health, now: datetime, retry_after: float | None) -> Health:
    """429: stay away for Retry-After; not a health failure."""
    wait = rate_limit_wait(retry_after)
    until = now + timedelta(seconds=min(OPEN_CAP_SECONDS, wait))
    current = health.circuit_open_until
    return replace(health, circuit_open_until=max(until, current) if current else until)


def batches_per_tick(
    health: Health, now: datetime, *, rate_limit: float, tick_interval: float
) -> int:
    """How many poll batches one dispatcher tick may hand out for this provider.

    Never more than the rate limit allows within one tick, so the queue holds at most one
    tick's worth of calls per provider and a slow provider cannot build a backlog.
    """
    state = health.state(now)
    if state in (CircuitState.PAUSED, CircuitState.OPEN):
        return 0
    if state is CircuitState.HALF_OPEN:
        return 1
    return max(1, math.ceil(rate_limit * tick_interval))


def key_probe_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds until the next probe of a rejected key, after ``failures`` probes that were
    rejected too: ``base``, doubling, capped at ``cap`` (never below ``base``)."""
    doublings = min(max(0, failures), _MAX_DOUBLINGS)
    return max(base, min(cap, base * 2.0**doublings))
