"""A per-provider request rate limit shared by every worker, kept in Redis.

It is a GCRA (generic cell rate algorithm) with a burst of one: calls to one provider are
spaced at least ``(1 + ARRIVAL_MARGIN) / rate`` seconds apart, across all workers and
threads, so a provider never sees more than ``rate`` calls in any one-second window.

The margin is there because a call leaves a little after its slot (a thread's wake-up,
the GIL, the send), and not always equally late. With slots exactly ``1 / rate`` apart,
one late call followed by ``rate`` punctual ones puts ``rate + 1`` arrivals in one
second at the provider: measured here at 20 req/s, 21 in one window with no margin, and
22 with a 3% margin on a fully loaded 2-core machine. With the margin, a call may be up
to ``ARRIVAL_MARGIN`` seconds later than the others before that happens, for about 9%
of the throughput: never being over a provider's limit comes first. Redis' own clock
decides, so workers with skewed clocks still agree. A 429's Retry-After is stored as a
cool-down key that blocks every worker until it expires.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import redis

ARRIVAL_MARGIN = 0.10
# The longest a caller waits for its slot before ``RateLimitBusy`` (a task near its soft
# time limit waits less: see ``tracker.apiv2.client.calls_finish_by``).
MAX_WAIT_SECONDS = 10.0

# KEYS[1]: theoretical arrival time (µs); KEYS[2]: cool-down key.
# ARGV[1]: spacing between calls (µs); ARGV[2]: the longest wait the caller accepts (µs).
# Returns the µs the caller must sleep before its call (a slot is then reserved for it),
# or -µs when the wait would exceed the caller's limit (nothing is reserved).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then
  return -cooldown * 1000
end
local spacing = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now)
local wait = start - now
if wait > tonumber(ARGV[2]) then
  return -wait
end
redis.call('SET', KEYS[1], string.format('%.0f', start + spacing), 'PX', math.ceil((wait + spacing) / 1000) + 1000)
return wait
"""


class RateLimitBusy(RuntimeError):
    """The provider's budget is used up for longer than the caller may wait."""

    def __init__(self, provider_id: int, wait_seconds: float) -> None:
        super().__init__(f"provider {provider_id}: rate limit busy for {wait_seconds:.1f}s")
        self.wait_seconds = wait_seconds


class CallLimiter(Protocol):
    """What the gateway and provider health need of a rate limit: ``RateLimiter`` here,
    ``tracker.testing.InMemoryRateLimiter`` in use-case tests."""

    def acquire(self, provider_id: int, rate: float, *, max_wait: float = MAX_WAIT_SECONDS) -> float: ...

    def cool_down(self, provider_id: int, seconds: float) -> None: ...


class RateLimiter:
    def __init__(self, client: redis.Redis, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._prefix = prefix
        self._script: Any = client.register_script(_GCRA)

    @classmethod
    def from_url(cls, url: str) -> RateLimiter:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def _keys(self, provider_id: int) -> list[str]:
        return [f"{self._prefix}:rate:{provider_id}", f"{self._prefix}:cooldown:{provider_id}"]

    def acquire(self, provider_id: int, rate: float, *, max_wait: float = MAX_WAIT_SECONDS) -> float:
        """Block until this process may call the provider; return the seconds waited."""
        if rate <= 0:
            return 0.0
        spacing_us = int(1_000_000 * (1 + ARRIVAL_MARGIN) / rate)
        wait_us = int(self._script(keys=self._keys(provider_id), args=[spacing_us, int(max_wait * 1e6)]))
        if wait_us < 0:
            raise RateLimitBusy(provider_id, -wait_us / 1e6)
        if wait_us:
            time.sleep(wait_us / 1e6)
        return wait_us / 1e6

    def cool_down(self, provider_id: int, seconds: float) -> None:
        """Stop every worker from calling this provider for ``seconds`` (e.g. Retry-After)."""
        milliseconds = max(1, int(seconds * 1000))
        key = self._keys(provider_id)[1]
        # Never shorten a longer cool-down already in place.
        if int(self._redis.pttl(key)) < milliseconds:
            self._redis.set(key, "1", px=milliseconds)
