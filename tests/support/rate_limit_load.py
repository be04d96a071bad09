"""Load on the shared rate limit: eight threads in two limiters (two Redis connections,
standing for two worker processes) making status calls to a provider as fast as the limit
lets them. Used by the rate-limit test and by benchmarks/timing_checks.py, which times it."""

from __future__ import annotations

import threading

from tracker.provider.client import ProviderClient
from tracker.providers.ratelimit import RateLimiter

THREADS_PER_LIMITER = 4


def status_calls_through_two_limiters(
    *,
    provider_url: str,
    api_key: str,
    order_ids: list[int],
    broker_url: str,
    provider_id: int,
    rate: float,
    calls: int,
    join_timeout: float,
) -> None:
    """Make ``calls`` status calls for ``order_ids`` in all, shared among the threads, each
    throttled by its limiter to ``rate`` calls a second for ``provider_id``."""
    limiters = [RateLimiter.from_url(broker_url), RateLimiter.from_url(broker_url)]
    remaining = [calls]
    lock = threading.Lock()

    def caller(limiter: RateLimiter) -> None:
        def throttle(_action: str) -> None:
            limiter.acquire(provider_id, rate)

        client = ProviderClient(provider_url, api_key, before_call=throttle)
        try:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                client.status_multi(order_ids)
        finally:
            client.close()

    threads = [
        threading.Thread(target=caller, args=(limiter,))
        for limiter in limiters
        for _ in range(THREADS_PER_LIMITER)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=join_timeout)
