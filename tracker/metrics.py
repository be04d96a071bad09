"""Per-provider call counters in Redis: calls, errors, IDs and answers salvaged from PHP
notices (``CallRecord.noise``) per minute, kept two hours.

Workers count every provider call (the client's ``after_call`` hook); ``tracker stats``
sums the last 60 minutes. Redis, not the database: these counters change on every call,
and one hot row per provider would serialise every poll task on PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from tracker.provider.client import CallRecord

RETENTION_SECONDS = 2 * 3600


@dataclass(frozen=True, slots=True)
class CallCounts:
    calls: int = 0
    errors: int = 0
    ids: int = 0
    # Successful calls whose answer had PHP notices before its JSON.
    noisy: int = 0


class CallMetrics:
    def __init__(self, client: redis.Redis, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str) -> CallMetrics:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def _key(self, provider_id: int, minute: int) -> str:
        return f"{self._prefix}:calls:{provider_id}:{minute}"

    def record(self, provider_id: int, call: CallRecord) -> None:
        key = self._key(provider_id, int(time.time() // 60))
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "calls", 1)
            pipe.hincrby(key, "ids", call.ids)
            if call.error is not None:
                pipe.hincrby(key, "errors", 1)
            if call.noise:
                pipe.hincrby(key, "noisy", 1)
            pipe.expire(key, RETENTION_SECONDS)
            pipe.execute()

    def last_hour(self, provider_id: int) -> CallCounts:
        now_minute = int(time.time() // 60)
        with self._redis.pipeline(transaction=False) as pipe:
            for minute in range(now_minute - 59, now_minute + 1):
                pipe.hgetall(self._key(provider_id, minute))
            buckets = pipe.execute()
        calls = errors = ids = noisy = 0
        for bucket in buckets:
            calls += int(bucket.get(b"calls", 0))
            errors += int(bucket.get(b"errors", 0))
            ids += int(bucket.get(b"ids", 0))
            noisy += int(bucket.get(b"noisy", 0))
        return CallCounts(calls, errors, ids, noisy)
