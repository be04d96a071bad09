"""Imported at start-up (``PYTHONPATH``) by the test processes run under faketime.

libfaketime 0.9.10 (Debian 12) with a real monotonic clock (``FAKETIME_DONT_FAKE_MONOTONIC``,
without which every timed condition wait hangs) breaks
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``, which ``time.sleep`` uses since
Python 3.11: it fails with EINVAL (wolfcw/libfaketime#426). So ``time.sleep`` waits on an
event instead, a relative wait on the real monotonic clock; still interruptible by a
signal (a task's soft time limit), as a sleep is.
"""

from __future__ import annotations

import threading
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    length = float(seconds)
    if length < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(length)


time.sleep = _sleep
