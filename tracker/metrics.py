"""Per-provider call counters in Redis: calls, errors, IDs and answers salvaged from PHP
diagnostics (``CallRecord.salvaged``, also by its worst severity) per minute, kept two
hours, and running totals per action and outcome, kept for good.

Workers count every provider call (the client's ``after_call`` hook); ``tracker stats``
sums the last 60 minutes, and ``tracker exporter`` serves the totals as Prometheus
counters (a flushed broker resets them, which Prometheus' ``rate()`` handles). Redis, not
the database: these counters change on every call, and one hot row per provider would
serialise every poll task on PostgreSQL.

Actions, outcomes and severities are bounded sets (``ACTIONS``, ``OUTCOMES``,
``SEVERITIES``): anything else is counted as ``other`` (a severity: not at all), so the
exporter's label values can never grow without bound.

The salvaged answers are counted twice: in all (``noisy`` per minute, ``salvaged`` in the
totals, as before severities were counted) and by severity (``noisy|warning``,
``salvaged|warning``...). Counts written before the split have no severity: they stay in
the totals, and the exporter shows them as ``unknown``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import redis

from tracker.apiv2 import errors
from tracker.apiv2.php_noise import PhpSeverity
from tracker.redis_clients import redis_client

if TYPE_CHECKING:
    from tracker.apiv2.client import CallRecord

RETENTION_SECONDS = 2 * 3600

# The API v2 actions the client makes.
ACTIONS = frozenset({"services", "add", "status", "refill", "refill_status", "cancel", "balance"})
OTHER = "other"
OK = "ok"


def _error_names(root: type[errors.ProviderError]) -> set[str]:
    names = {root.__name__}
    for subclass in root.__subclasses__():
        names |= _error_names(subclass)
    return names


# A call's outcome: ``ok``, or the class name of the ``ProviderError`` it raised.
OUTCOMES = frozenset({OK, OTHER} | _error_names(errors.ProviderError))


# The worst PHP diagnostic around a salvaged answer's JSON, mildest first.
SEVERITIES: tuple[str, ...] = tuple(severity.value for severity in PhpSeverity)


def action_label(action: str) -> str:
    return action if action in ACTIONS else OTHER


def outcome_label(error: str | None) -> str:
    if error is None:
        return OK
    return error if error in OUTCOMES else OTHER


@dataclass(frozen=True, slots=True)
class CallTotals:
    """Since the counters began: calls by (action, outcome), IDs by action, salvaged
    answers in all and by the worst severity around their JSON (the difference: counted
    before severities were)."""

    calls: dict[tuple[str, str], int]
    ids: dict[str, int]
    salvaged: int
    salvaged_by_severity: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallCounts:
    calls: int = 0
    errors: int = 0
    ids: int = 0
    # Answers read from among PHP diagnostics, in all and by their worst severity.
    noisy: int = 0
    noisy_by_severity: dict[str, int] = field(default_factory=dict)


class CallRecorder(Protocol):
    """Where the gateway counts each provider call: ``CallMetrics`` here,
    ``tracker.testing.InMemoryCallMetrics`` in use-case tests."""

    def record(self, provider_id: int, call: CallRecord) -> None: ...


class CallMetrics:
    def __init__(self, client: redis.Redis, *, prefix: str = "tracker") -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str) -> CallMetrics:
        return cls(redis_client(url))

    def _key(self, provider_id: int, minute: int) -> str:
        return f"{self._prefix}:calls:{provider_id}:{minute}"

    def _totals_key(self, provider_id: int) -> str:
        return f"{self._prefix}:call-totals:{provider_id}"

    def record(self, provider_id: int, call: CallRecord) -> None:
        key = self._key(provider_id, int(time.time() // 60))
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "calls", 1)
            pipe.hincrby(key, "ids", call.ids)
            if call.error is not None:
                pipe.hincrby(key, "errors", 1)
            if call.salvaged is not None:
                pipe.hincrby(key, "noisy", 1)
                pipe.hincrby(key, f"noisy|{call.salvaged.value}", 1)
            pipe.expire(key, RETENTION_SECONDS)
            totals, action = self._totals_key(provider_id), action_label(call.action)
            pipe.hincrby(totals, f"calls|{action}|{outcome_label(call.error)}", 1)
            pipe.hincrby(totals, f"ids|{action}", call.ids)
            if call.salvaged is not None:
                pipe.hincrby(totals, "salvaged", 1)
                pipe.hincrby(totals, f"salvaged|{call.salvaged.value}", 1)
            pipe.execute()

    def totals(self, provider_ids: list[int]) -> dict[int, CallTotals]:
        """Running totals per provider, in one round trip. Raises ``redis.RedisError`` when
        Redis does not answer, even for no provider (the round trip starts with a PING)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.ping()
            for provider_id in provider_ids:
                pipe.hgetall(self._totals_key(provider_id))
            _, *hashes = pipe.execute()
        return {provider_id: _parse_totals(fields) for provider_id, fields in zip(provider_ids, hashes)}

    def last_hour(self, provider_id: int) -> CallCounts:
        now_minute = int(time.time() // 60)
        with self._redis.pipeline(transaction=False) as pipe:
            for minute in range(now_minute - 59, now_minute + 1):
                pipe.hgetall(self._key(provider_id, minute))
            buckets = pipe.execute()
        calls = errors = ids = noisy = 0
        by_severity = dict.fromkeys(SEVERITIES, 0)
        for bucket in buckets:
            calls += int(bucket.get(b"calls", 0))
            errors += int(bucket.get(b"errors", 0))
            ids += int(bucket.get(b"ids", 0))
            noisy += int(bucket.get(b"noisy", 0))
            for severity in SEVERITIES:
                by_severity[severity] += int(bucket.get(f"noisy|{severity}".encode(), 0))
        return CallCounts(calls, errors, ids, noisy, by_severity)


def _parse_totals(fields: dict[bytes, bytes]) -> CallTotals:
    calls: dict[tuple[str, str], int] = {}
    ids: dict[str, int] = {}
    salvaged = 0
    by_severity = dict.fromkeys(SEVERITIES, 0)
    for raw_name, raw_value in fields.items():
        kind, *labels = raw_name.decode().split("|")
        value = int(raw_value)
        if kind == "calls" and len(labels) == 2:
            # Re-checked on reading: the hash is only ever written by record(), but Redis
            # is shared, and a label set must stay bounded whatever is in it.
            key = (action_label(labels[0]), labels[1] if labels[1] in OUTCOMES else OTHER)
            calls[key] = calls.get(key, 0) + value
        elif kind == "ids" and len(labels) == 1:
            action = action_label(labels[0])
            ids[action] = ids.get(action, 0) + value
        elif kind == "salvaged" and not labels:
            salvaged += value
        elif kind == "salvaged" and len(labels) == 1 and labels[0] in by_severity:
            by_severity[labels[0]] += value
    return CallTotals(calls, ids, salvaged, by_severity)
