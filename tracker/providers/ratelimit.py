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

The margin only holds if a caller goes when its slot comes. On a loaded host (one core,
a busy neighbour, a garbage collection) a thread may wake from its wait long after its
slot, while the callers of the next slots are on time; its call would then arrive
bunched with theirs. So a caller that finds itself more than ``LATE_TOLERANCE`` past its
slot gives the slot up and takes a new one: a wasted slot costs a little throughput,
never the provider's limit.

A failover (Sentinel promoting the replica, a managed Redis switching nodes, a restart
from an older snapshot) may lose the latest reservations: replication is asynchronous,
so the server that answers now may hold a theoretical arrival time from a moment ago.
The workers the old server gave a slot still make their calls, up to the longest wait
it granted ahead, and the new server would hand out the same moments again. So the
script notes, beside the limits, which server last wrote them (its ``run_id``). A server
that finds another server's note has taken over: it holds every provider's next slot
until ``failover_pause`` after that moment plus one spacing, and no caller ever waits
longer than ``failover_pause`` for a slot, so by then every slot the old server granted
has passed. The check runs inside the script: no extra round trip. A flushed Redis, or
one restarted empty, has no note: its limits start afresh, with no pause.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import redis

from tracker.config import DEFAULT_FAILOVER_PAUSE, DEFAULT_SENTINEL_MASTER
from tracker.redis_clients import redis_client

# The longest a caller waits for its slot before ``RateLimitBusy`` (a task near its soft
# time limit waits less: see ``tracker.apiv2.client.calls_finish_by``).
MAX_WAIT_SECONDS = 10.0

ARRIVAL_MARGIN = 0.10
# How late past its slot a caller may still go: half the margin's slack (the margin
# absorbs ARRIVAL_MARGIN seconds of lateness in all), the other half is left for the send.
LATE_TOLERANCE = ARRIVAL_MARGIN / 2

# KEYS[1]: theoretical arrival time (µs); KEYS[2]: cool-down key; KEYS[3]: the run_id of
# the server that last wrote the limits; KEYS[4]: when a server that took over lets
# calls resume (µs, its own clock).
# ARGV[1]: spacing between calls (µs); ARGV[2]: the longest wait the caller accepts (µs);
# ARGV[3]: the failover pause (µs).
# Returns the µs the caller must sleep before its call (a slot is then reserved for it),
# or -µs when the wait would exceed the caller's limit (nothing is reserved).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local server = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or 'unknown'
local writer = redis.call('GET', KEYS[3])
if writer ~= server then
  if writer then
    redis.call('SET', KEYS[4], string.format('%.0f', now + tonumber(ARGV[3])))
  end
  redis.call('SET', KEYS[3], server)
end
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then
  return -cooldown * 1000
end
local spacing = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now)
local resume = tonumber(redis.call('GET', KEYS[4]) or '0')
if resume > 0 then
  start = math.max(start, resume + spacing)
end
local wait = start - now
if wait > tonumber(ARGV[2]) then
  return -math.max(wait, 1)
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
    def __init__(
        self, client: redis.Redis, *, prefix: str = "tracker", failover_pause: float = DEFAULT_FAILOVER_PAUSE
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._failover_pause = failover_pause
        self._script: Any = client.register_script(_GCRA)

    @classmethod
    def from_url(
        cls, url: str, *, master_name: str = DEFAULT_SENTINEL_MASTER, failover_pause: float = DEFAULT_FAILOVER_PAUSE
    ) -> RateLimiter:
        return cls(redis_client(url, master_name=master_name), failover_pause=failover_pause)

    def _keys(self, provider_id: int) -> list[str]:
        return [
            f"{self._prefix}:rate:{provider_id}",
            f"{self._prefix}:cooldown:{provider_id}",
            f"{self._prefix}:rate-server",
            f"{self._prefix}:rate-resume",
        ]

    def acquire(self, provider_id: int, rate: float, *, max_wait: float = MAX_WAIT_SECONDS) -> float:
        """Block until this process may call the provider; return the seconds it waited for
        its slots (more than one when it woke too late for the first)."""
        if rate <= 0:
            return 0.0
        spacing_us = int(1_000_000 * (1 + ARRIVAL_MARGIN) / rate)
        # Never a slot further ahead than the failover pause: a server that takes over
        # must outwait every slot the one before it granted.
        longest_wait = min(max_wait, self._failover_pause)
        pause_us = int(self._failover_pause * 1e6)
        started = time.monotonic()
        waited = 0.0
        while True:
            # Measured from before the reservation: the slot is no earlier than this plus
            # the wait, so lateness is never underestimated.
            asked = time.monotonic()
            # Never below 0: the script reads a wait above a negative limit as a refusal of
            # -0 µs, which would let the caller through with nothing reserved.
            wait_left_us = max(0, int((longest_wait - (asked - started)) * 1e6))
            wait_us = int(self._script(keys=self._keys(provider_id), args=[spacing_us, wait_left_us, pause_us]))
            if wait_us < 0:
                raise RateLimitBusy(provider_id, -wait_us / 1e6)
            if wait_us:
                time.sleep(wait_us / 1e6)
            waited += wait_us / 1e6
            if time.monotonic() - (asked + wait_us / 1e6) <= LATE_TOLERANCE:
                return waited

    def cool_down(self, provider_id: int, seconds: float) -> None:
        """Stop every worker from calling this provider for ``seconds`` (e.g. Retry-After)."""
        milliseconds = max(1, int(seconds * 1000))
        key = self._keys(provider_id)[1]
        # Never shorten a longer cool-down already in place.
        if int(self._redis.pttl(key)) < milliseconds:
            self._redis.set(key, "1", px=milliseconds)
