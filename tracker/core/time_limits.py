"""A task's time limit, and the exceptions that interrupt work wherever it happens to be.

A ``Deadline`` is a moment on this process's monotonic clock: elapsed time, which no
wall-clock step (NTP, a host whose clock is a minute off) can stretch or shrink. A task
that loops over units of work (calls, POSTs, probes) starts a unit only when the
unit's worst case still fits before its deadline, and gives the rest back.

Interruptions are raised asynchronously, by a signal handler: KeyboardInterrupt,
SystemExit, and in a worker Celery's soft time limit (``tracker.worker.signals``
registers it; the CLI never imports Celery). Code that catches ``Exception`` around a
unit of work lets them through first (``except interruptions(): raise``), so a soft
limit is never taken for the unit's own failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deadline:
    """``at``: a ``time.monotonic()`` reading."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds until the deadline; negative once it has passed."""
        return self.at - time.monotonic()

    def allows(self, seconds: float) -> bool:
        """Whether work taking ``seconds`` at worst, started now, ends before the deadline."""
        return self.left() >= seconds

    def sooner(self, seconds: float) -> Deadline:
        """This deadline less ``seconds`` (kept for what must follow the work)."""
        return Deadline(self.at - seconds)

    def earliest(self, other: Deadline | None) -> Deadline:
        return self if other is None or self.at <= other.at else other


# The shortest expiry the tracker puts on a message it sends to itself (beat's ticks, the
# dispatcher's wake-ups). Celery stamps an expiry with the sender's wall clock and checks
# it with the receiver's: a worker a minute ahead of beat would take every tick for
# expired and drop it. Hosts' clocks may differ by up to this much without a message
# being lost; a redundant tick or wake-up costs one quick dispatcher run.
MESSAGE_EXPIRY_FLOOR_SECONDS = 300.0


def deadline_or_after(deadline: Deadline | None, seconds: float) -> Deadline:
    """The task's deadline when one is given; otherwise (a one-off run, a test) one that
    many seconds from now (the soft time limit), so the run still keeps within what a
    task would."""
    return deadline if deadline is not None else Deadline.after(seconds)


_interruptions: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)


def treat_as_interruption(exception: type[BaseException]) -> None:
    """Register an exception that a signal handler raises (Celery's soft time limit)."""
    global _interruptions
    if exception not in _interruptions:
        _interruptions = (*_interruptions, exception)


def interruptions() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "stop now", never a unit of work's own failure."""
    return _interruptions
