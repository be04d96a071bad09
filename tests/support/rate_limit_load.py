"""Load on the shared rate limit: eight threads in two limiters (two Redis connections,
standing for two worker processes) making status calls to the sim as fast as the limit
lets them. Used by the rate-limit test and by benchmarks/timing_checks.py, which times it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from tracker.apiv2.client import ProviderClient
from tracker.providers.ratelimit import RateLimiter
from tracker.sim.server import SimServer

THREADS_PER_LIMITER = 4


@dataclass(frozen=True)
class LoadResult:
    seconds: float  # from the first thread's start to the last one's end
    status_stats: dict[str, Any]  # the sim's counters of the status action


def rate_limited_status_calls(
    api_key: str, broker_url: str, provider_id: int, rate: float, calls: int, join_timeout: float
) -> LoadResult:
    """``calls`` status calls of 100 IDs in all, shared among the threads, each throttled by
    its limiter to ``rate`` calls a second for ``provider_id``."""
    with SimServer(dialect="standard", api_key=api_key, seed=11) as sim:
        ids = sim.seed_orders(count=100, service=1)
        limiters = [RateLimiter.from_url(broker_url), RateLimiter.from_url(broker_url)]
        remaining = [calls]
        lock = threading.Lock()

        def caller(limiter: RateLimiter) -> None:
            def throttle(_action: str, _max_wait: float | None) -> None:
                limiter.acquire(provider_id, rate)

            client = ProviderClient(sim.url, api_key, before_call=throttle)
            try:
                while True:
                    with lock:
                        if remaining[0] == 0:
                            return
                        remaining[0] -= 1
                    client.status_multi(ids)
            finally:
                client.close()

        threads = [
            threading.Thread(target=caller, args=(limiter,))
            for limiter in limiters
            for _ in range(THREADS_PER_LIMITER)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=join_timeout)
        seconds = time.monotonic() - started
        return LoadResult(seconds, sim.stats()["actions"]["status"])
