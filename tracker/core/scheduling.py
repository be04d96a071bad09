"""When to poll next: adaptive intervals and back-off. Pure arithmetic.

Adaptive polling (documented in docs/architecture.md): an order whose last answer changed something
is polled again after one base interval. Each run of three unchanged answers doubles the
interval, up to ``max_factor`` base intervals, so a stale In-progress order costs a
fraction of the calls of a moving one. Final orders are never polled. Delays get +/-10%
jitter, drawn once per polled batch, not per order: batches spread out instead of hitting
the provider in one burst forever after, while the orders of one batch stay in step, so
they are due together again and the next sweep's calls are full 100-ID calls too.
"""

from __future__ import annotations

import random

UNCHANGED_POLLS_PER_DOUBLING = 3
JITTER = 0.10
# 2**62 is past every cap we use, and far from float overflow (2**1024): counters that
# grew for months (polls of a stuck order, failures of a dead provider) stay harmless.
MAX_DOUBLINGS = 62


def doubling(exponent: int) -> float:
    """``2 ** exponent`` for back-off factors, with the exponent clamped to [0, MAX_DOUBLINGS]."""
    return 2.0 ** min(max(0, exponent), MAX_DOUBLINGS)


def draw_jitter(rng: random.Random | None = None) -> float:
    """One batch's jitter, for every ``poll_delay`` of that batch."""
    return (rng or random).uniform(-JITTER, JITTER)


def poll_delay(
    unchanged_polls: int,
    *,
    base_interval: float,
    max_factor: float,
    jitter: float,
) -> float:
    """Seconds until the next poll of an active order."""
    factor = min(max_factor, doubling(unchanged_polls // UNCHANGED_POLLS_PER_DOUBLING))
    return base_interval * factor * (1.0 + jitter)


def failure_backoff(
    consecutive_failures: int,
    *,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the n-th consecutive failure: exponential, "equal" jitter, capped.

    Equal jitter (uniform between half and all of the exponential step) keeps many workers
    that failed together from retrying together.
    """
    step = min(cap, base * doubling(consecutive_failures - 1))
    return (rng or random).uniform(step / 2.0, step)
