"""The shared rate limit, seen from the provider's side: real Redis, real HTTP to the sim.

Two limiters with their own Redis connections stand for two worker processes (the
limit's whole state is in Redis), each with four threads calling as fast as they can.
The sim counts arrivals in every sliding one-second window.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import TEST_API_KEY
from tracker.provider.client import ProviderClient
from tracker.ratelimit import ARRIVAL_MARGIN, RateLimiter
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

RATE = 20.0
CALLS = 70
PROVIDER_ID = 1


def test_many_threads_in_two_processes_never_exceed_the_rate_in_any_second(broker_url: str) -> None:
    with SimServer(dialect="standard", api_key=TEST_API_KEY, seed=11) as sim:
        ids = sim.seed_orders(count=100, service=1)
        limiters = [RateLimiter.from_url(broker_url), RateLimiter.from_url(broker_url)]
        remaining = [CALLS]
        lock = threading.Lock()

        def caller(limiter: RateLimiter) -> None:
            def throttle(_action: str) -> None:
                limiter.acquire(PROVIDER_ID, RATE)

            client = ProviderClient(sim.url, TEST_API_KEY, before_call=throttle)
            try:
                while True:
                    with lock:
                        if remaining[0] == 0:
                            return
                        remaining[0] -= 1
                    client.status_multi(ids)
            finally:
                client.close()

        threads = [threading.Thread(target=caller, args=(limiter,)) for limiter in limiters for _ in range(4)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - started
        stats = sim.stats()["actions"]["status"]

    assert stats["calls"] == CALLS
    assert stats["max_calls_in_any_1s_window"] <= RATE
    # Not throttled harder than the margin: the calls took about (CALLS - 1) slots.
    slot = (1 + ARRIVAL_MARGIN) / RATE
    assert (CALLS - 1) * slot * 0.98 <= elapsed <= (CALLS - 1) * slot + 1.5
    assert stats["max_calls_in_any_1s_window"] >= RATE - 2
