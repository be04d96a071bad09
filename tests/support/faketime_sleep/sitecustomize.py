"""Loaded (as ``sitecustomize``) by the Python processes the tests run under ``faketime``
with ``FAKETIME_DONT_FAKE_MONOTONIC=1``: their ``time.sleep`` waits in ``select``.

libfaketime 0.9.10 (Debian 12) mistranslates ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME, …)`` when the monotonic clock is left alone, so Python 3.11's
``time.sleep``, which sleeps that way, fails with ``OSError: [Errno 22] Invalid argument``
(libfaketime issue #426). Faking the monotonic clock too is no way out: Python's lock
and ``Event`` timeouts then hand the kernel deadlines on the faked clock and never wake
(issue #390). ``select`` with a relative timeout is passed through as it is, so a sleep
lasts as long as asked; the wall clock stays skewed, which is the point.
"""

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
