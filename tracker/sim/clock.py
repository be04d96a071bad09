"""The sim clock: sim seconds since the simulator started, at ``speed`` sim s per real s.

It only reads ``time.monotonic``; nothing ticks in the background. Changing the speed or
jumping ahead re-anchors the clock, so sim time never goes backwards.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple


class _Anchor(NamedTuple):
    monotonic: float
    wall: float
    sim: float
    speed: float


class SimClock:
    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._lock = threading.Lock()
        self._anchor = _Anchor(time.monotonic(), time.time(), 0.0, speed)

    @property
    def speed(self) -> float:
        return self._anchor.speed

    def now(self) -> float:
        anchor = self._anchor  # one read: the tuple is swapped atomically
        return anchor.sim + (time.monotonic() - anchor.monotonic) * anchor.speed

    def _reanchor(self, jump_s: float, speed: float) -> None:
        with self._lock:
            sim_now = self.now() + jump_s
            self._anchor = _Anchor(time.monotonic(), time.time(), sim_now, speed)

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._reanchor(0.0, speed)

    def advance(self, seconds: float) -> float:
        """Jump ``seconds`` of sim time ahead at once; returns the new sim time."""
        if seconds < 0:
            raise ValueError("the sim clock only moves forward")
        self._reanchor(seconds, self._anchor.speed)
        return self.now()

    def to_unix(self, sim_t: float) -> float:
        """Wall-clock time at which the sim clock shows ``sim_t``, at the current speed.

        Exact for times after the last speed change or jump; an estimate before it.
        """
        anchor = self._anchor
        return anchor.wall + (sim_t - anchor.sim) / anchor.speed
