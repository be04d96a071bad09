"""A task's soft time limit in the test's own process: a timer signal whose handler raises
Celery's ``SoftTimeLimitExceeded`` in the main thread, as the pool's handler does in a
worker's child, registered as an interruption as the worker registers it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from billiard.exceptions import SoftTimeLimitExceeded

from tracker.core.time_limits import treat_as_interruption

treat_as_interruption(SoftTimeLimitExceeded)


@contextmanager
def soft_limit_after(seconds: float) -> Iterator[None]:
    def raise_soft_limit(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, raise_soft_limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
