"""What the dispatcher may hand out, kept in Redis: each provider's call budget, its work
in flight, and the worker capacity that work is shared out of.

Budgets: the dispatcher runs on beat's tick and also as soon as a poll task ends (so a
freed slot does not idle until the next tick). Each run may hand a provider only the calls
its rate has earned since the last run, up to one tick's worth: a token bucket per
provider (``CallBudgets``), refilled at the provider's rate. Only the dispatcher, under
its lock, reads and writes it.

Why: a tick's rate budget says how many calls a provider may *receive*, not how many of
the worker's pool children its tasks may *hold*. A panel that answers in 25 s (inside the
read timeout, so its circuit never opens) would otherwise collect a tick's worth of tasks
every tick until it held every child, and every other provider, the dispatcher and the
shop's ``track_orders`` would wait behind it.

So the dispatcher counts each provider's tasks that are queued or running (``InFlight``)
and hands out no more than its share of the poll slots the workers announce
(``Capacity``). Both are self-healing: a task ends its entry when it finishes, and an entry
a killed task left behind ends with its claim's lease (its score), which is also when the
rows become due again. A worker announces itself every few seconds with a short expiry,
so a worker that died stops counting within a minute.

No worker's wall clock decides anything here, since hosts' clocks differ: budgets and
in-flight entries are timed by the dispatcher's ``now``, the database's clock, and
announcements by Redis' own clock (``TIME``, inside the scripts below).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

import redis

# Children each worker keeps free of polls: the dispatcher, the shop's tasks and the
# outbox never wait behind a poll for more than the shortest running one.
CONTROL_SLOTS = 1
# How long a worker's announcement counts without being renewed.
ANNOUNCEMENT_TTL_SECONDS = 30.0
# A provider's budget and in-flight keys lapse after this long unused.
IDLE_KEY_SECONDS = 86400


class CallBudgets(Protocol):
    def available(self, provider_id: int, per_tick: int, now: datetime, *, most: int) -> int:
        """Calls this provider may be handed now. ``per_tick``: what one tick earns (its
        rate times the tick, or less while its circuit is not closed); ``most``: the most
        it may save up."""
        ...

    def spend(self, provider_id: int, calls: int) -> None: ...


class FreshBudgets:
    """A whole tick's budget at every run: for one-off runs and tests that claim once."""

    def available(self, provider_id: int, per_tick: int, now: datetime, *, most: int) -> int:
        return per_tick

    def spend(self, provider_id: int, calls: int) -> None:
        return None


def bucket_tokens(
    stored: tuple[float, float, int] | None, at: float, per_tick: int, most: int, tick_interval: float
) -> float:
    """The tokens in a provider's bucket at ``at`` (epoch seconds), from what was stored
    as (tokens, at, per_tick): refilled with ``per_tick`` per tick, holding at most
    ``max(most, per_tick)``."""
    ceiling = float(max(most, per_tick))
    if stored is None or stored[2] != per_tick:
        # New, or the provider's allowance changed (rate edited, circuit moved): a full
        # bucket (exactly one call for a half-open circuit's probe).
        return ceiling
    tokens, stored_at, _ = stored
    return min(ceiling, tokens + max(0.0, at - stored_at) * per_tick / tick_interval)


class TokenBudgets:
    """Token buckets in Redis, refilled with ``per_tick`` tokens per tick, holding ``most``."""

    def __init__(self, client: redis.Redis, tick_interval: float, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._tick_interval = tick_interval
        self._prefix = prefix
        self._seen: dict[int, tuple[float, float, int]] = {}

    def _key(self, provider_id: int) -> str:
        return f"{self._prefix}:budget:{provider_id}"

    def available(self, provider_id: int, per_tick: int, now: datetime, *, most: int) -> int:
        at = epoch(now)
        stored_tokens, stored_at, stored_per_tick = self._redis.hmget(
            self._key(provider_id), ["tokens", "at", "per_tick"]
        )
        stored = (
            None
            if stored_tokens is None or stored_at is None or stored_per_tick is None
            else (float(stored_tokens), float(stored_at), int(stored_per_tick))
        )
        tokens = bucket_tokens(stored, at, per_tick, most, self._tick_interval)
        self._seen[provider_id] = (tokens, at, per_tick)
        return int(tokens)

    def spend(self, provider_id: int, calls: int) -> None:
        tokens, at, per_tick = self._seen[provider_id]
        tokens -= calls
        self._seen[provider_id] = (tokens, at, per_tick)
        key = self._key(provider_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"tokens": repr(tokens), "at": repr(at), "per_tick": per_tick})
        pipe.expire(key, IDLE_KEY_SECONDS)
        pipe.execute()


def poll_slots_of(concurrency: int) -> int:
    """Pool children a worker of this concurrency lends to provider calls."""
    return max(1, concurrency - CONTROL_SLOTS)


def epoch(moment: datetime) -> float:
    """Seconds since the epoch; naive datetimes are UTC (the database clock's)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class InFlight:
    """Each provider's tasks handed out and not yet finished, as a sorted set of task
    tokens scored by the end of their claim's lease."""

    def __init__(self, client: redis.Redis, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._prefix = prefix

    def _key(self, provider_id: int) -> str:
        return f"{self._prefix}:inflight:{provider_id}"

    def counts(self, provider_ids: Iterable[int], now: datetime) -> dict[int, int]:
        ids = list(provider_ids)
        pipe = self._redis.pipeline(transaction=False)
        for provider_id in ids:
            # Entries of tasks killed before they could end their entry lapse with the lease.
            pipe.zremrangebyscore(self._key(provider_id), "-inf", epoch(now))
            pipe.zcard(self._key(provider_id))
        replies = pipe.execute()
        return {provider_id: int(replies[2 * index + 1]) for index, provider_id in enumerate(ids)}

    def started(self, provider_id: int, token: str, lease_until: datetime) -> None:
        key = self._key(provider_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {token: epoch(lease_until)})
        # The whole set lapses if nothing is handed out for a day (a removed provider).
        # Its entries end by their score, on the database's clock, as the dispatcher
        # counts them: no worker's wall clock is compared with either.
        pipe.expire(key, IDLE_KEY_SECONDS)
        pipe.execute()

    def finished(self, provider_id: int, token: str) -> None:
        self._redis.zrem(self._key(provider_id), token)


class LastServed:
    """When each provider was last handed a task, as a sequence number (higher is later):
    the dispatcher serves the provider that has waited longest first
    (``tracker.polling.dispatch.SlotShare``). A number, not a time, so no host's clock
    decides the order; only the dispatcher, under its lock, writes it. Lost with Redis,
    it starts afresh: providers are then served in id order once, and in turn after."""

    def __init__(self, client: redis.Redis, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._key = f"{prefix}:last-served"

    def load(self) -> dict[int, int]:
        entries: Mapping[bytes | str, bytes | str] = self._redis.hgetall(self._key)
        return {int(provider_id): int(stamp) for provider_id, stamp in entries.items()}

    def record(self, stamps: Mapping[int, int]) -> None:
        if stamps:
            self._redis.hset(self._key, mapping={str(provider_id): stamp for provider_id, stamp in stamps.items()})


# Announcements are judged by Redis' clock (TIME), never a worker's: a dispatcher whose
# clock ran ahead would drop every live announcement, and with none left there is no cap.
# KEYS[1]: the capacity hash; ARGV: worker, slots, seconds the announcement counts.
_ANNOUNCE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
return now
"""
# KEYS[1]: the capacity hash. Returns the slots of the announcements still running, and
# removes the lapsed ones (and any entry it cannot read).
_POLL_SLOTS = """
local now = tonumber(redis.call('TIME')[1])
local entries = redis.call('HGETALL', KEYS[1])
local total = 0
for index = 1, #entries, 2 do
  local slots, expires = string.match(entries[index + 1], '^(%d+) ([%d.eE+-]+)$')
  if slots == nil or tonumber(expires) == nil or tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], entries[index])
  else
    total = total + tonumber(slots)
  end
end
return total
"""


class Capacity:
    """Poll slots announced by the live workers, on Redis' clock."""

    def __init__(self, client: redis.Redis, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._key = f"{prefix}:capacity"
        self._announce: Any = client.register_script(_ANNOUNCE)
        self._poll_slots: Any = client.register_script(_POLL_SLOTS)

    def announce(self, worker: str, poll_slots: int) -> None:
        # One hash field per worker, "slots expiry": no key scan needed to sum them.
        self._announce(keys=[self._key], args=[worker, int(poll_slots), ANNOUNCEMENT_TTL_SECONDS])

    def withdraw(self, worker: str) -> None:
        self._redis.hdel(self._key, worker)

    def poll_slots(self) -> int | None:
        """Slots of the workers that announced themselves lately; None when none did (a
        one-off run outside a worker), which means no cap."""
        total = int(self._poll_slots(keys=[self._key]))
        return total or None


def poll_token(kind: str, claim_id: int) -> str:
    return f"{kind}:{claim_id}"


def attempt_token(request_id: int, claim_id: int) -> str:
    return f"refill-attempt:{request_id}:{claim_id}"
