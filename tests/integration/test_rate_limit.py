"""The shared rate limit, seen from the provider's side: real Redis, real HTTP to the sim.

Two limiters with their own Redis connections stand for two worker processes (the
limit's whole state is in Redis), each with four threads calling as fast as they can.
The sim counts arrivals in every sliding one-second window.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import redis

from tests.conftest import TEST_API_KEY
from tests.support.rate_limit_load import rate_limited_status_calls
from tracker.providers.ratelimit import ARRIVAL_MARGIN, RateLimitBusy, RateLimiter

pytestmark = pytest.mark.integration

RATE = 20.0
CALLS = 70
PROVIDER_ID = 1


def test_many_threads_in_two_processes_never_exceed_the_rate_in_any_second(broker_url: str) -> None:
    stats = rate_limited_status_calls(TEST_API_KEY, broker_url, PROVIDER_ID, RATE, CALLS, join_timeout=60).status_stats

    assert stats["calls"] == CALLS
    assert stats["max_calls_in_any_1s_window"] <= RATE
    # How close to RATE the calls came, and how long they took, depend on the machine's
    # speed: benchmarks/timing_checks.py prints both. That the limiter throttles no
    # harder than its margin is asserted on Redis' own reservations below.


def test_two_limiters_reserve_slots_exactly_one_spacing_apart(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limiter's reservations, read from Redis: each waiting caller gets the slot right
    after the previous one, ``(1 + ARRIVAL_MARGIN) / rate`` later, never a later one.

    The limiter's sleep is recorded instead of slept, so the callers ask much faster than
    the rate and every call but the first has to wait: no machine is too slow for that."""
    slept: list[float] = []
    monkeypatch.setattr("tracker.providers.ratelimit.time.sleep", slept.append)
    limiters = [RateLimiter.from_url(broker_url), RateLimiter.from_url(broker_url)]
    reader = redis.Redis.from_url(broker_url)
    spacing_us = int(1_000_000 * (1 + ARRIVAL_MARGIN) / RATE)
    reservations: list[int] = []
    waits: list[float] = []
    try:
        for call in range(CALLS):
            waits.append(limiters[call % 2].acquire(PROVIDER_ID, RATE, max_wait=3600))
            # The theoretical arrival time of the next call, in Redis' clock (µs).
            reservations.append(int(reader.get(f"tracker:rate:{PROVIDER_ID}") or 0))
    finally:
        reader.close()
    gaps = [later - earlier for earlier, later in zip(reservations, reservations[1:], strict=False)]
    waited = [gap for gap, wait in zip(gaps, waits[1:], strict=True) if wait > 0]
    # Never closer than one spacing (that would exceed the rate) ...
    assert all(gap >= spacing_us for gap in gaps), gaps
    # ... and a caller that had to wait got the very next slot: not throttled harder.
    assert waited and all(gap == spacing_us for gap in waited), gaps
    assert slept == [wait for wait in waits if wait > 0]
    # Each wait is at most the slots queued ahead of it.
    assert all(0 <= wait <= call * spacing_us / 1e6 + 0.001 for call, wait in enumerate(waits))


def most_in_any_second(moments: list[float]) -> int:
    moments = sorted(moments)
    most = start = 0
    for end, moment in enumerate(moments):
        while moments[start] <= moment - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_a_caller_that_wakes_late_takes_a_new_slot_instead_of_bunching(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded host (one core, a busy neighbour) a thread may wake from the limiter's
    sleep long after its slot, while the callers of the next slots are on time: sent then,
    its call would arrive together with theirs, over the rate. Here every third sleep
    overruns by 0.4 s; the moments the callers are let through are what a provider sees."""
    real_sleep = time.sleep
    sleeps = itertools.count()

    def oversleeping(seconds: float) -> None:
        real_sleep(seconds + (0.4 if next(sleeps) % 3 == 0 else 0.0))

    monkeypatch.setattr("tracker.providers.ratelimit.time.sleep", oversleeping)
    rate = 5.0
    limiter = RateLimiter.from_url(broker_url)
    let_through: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(6):
            limiter.acquire(PROVIDER_ID, rate, max_wait=60)
            with lock:
                let_through.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(let_through) == 24
    assert most_in_any_second(let_through) <= rate


def test_limits_another_server_wrote_pause_every_provider_once(broker_url: str) -> None:
    """What the limiter does when its limits come from another server (a failover): the
    note of the server that wrote them names another ``run_id``. The whole failover is
    in test_sentinel.py."""
    client = redis.Redis.from_url(broker_url)
    limiter = RateLimiter(client, failover_pause=2.0)
    spacing = (1 + ARRIVAL_MARGIN) / RATE
    try:
        # A fresh (or flushed) Redis has no note: no pause.
        assert limiter.acquire(PROVIDER_ID, RATE) == 0.0
        client.set("tracker:rate-server", "0" * 40)
        with pytest.raises(RateLimitBusy) as noticed:
            limiter.acquire(PROVIDER_ID, RATE, max_wait=3600)
        # The pause and one spacing; even a caller ready to wait an hour is not granted a
        # slot further ahead than the pause.
        assert 2.0 < noticed.value.wait_seconds <= 2.0 + spacing + 0.05
        # Every provider pauses, not only the one whose call noticed; once.
        with pytest.raises(RateLimitBusy):
            limiter.acquire(PROVIDER_ID + 1, RATE)
        assert client.get("tracker:rate-server") == str(client.info("server")["run_id"]).encode()
        assert client.exists("tracker:rate-resume")
    finally:
        client.close()


def test_a_caller_whose_wait_ran_out_gets_a_slot_or_a_refusal_never_a_free_pass(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that woke too late for its slot and has no wait left may go only on a slot
    it reserved again, or not at all: never on nothing (the limit's state untouched, so
    the next caller would get the same moment)."""
    real_sleep = time.sleep
    monkeypatch.setattr("tracker.providers.ratelimit.time.sleep", lambda seconds: real_sleep(seconds + 0.3))
    limiter = RateLimiter.from_url(broker_url)
    reader = redis.Redis.from_url(broker_url)
    key = f"tracker:rate:{PROVIDER_ID}"
    try:
        limiter.acquire(PROVIDER_ID, RATE)
        reserved_before = int(reader.get(key) or 0)
        try:
            limiter.acquire(PROVIDER_ID, RATE, max_wait=0.25)  # waits its slot, wakes 0.3 s late
        except RateLimitBusy:
            return  # refused: fine
        assert int(reader.get(key) or 0) > reserved_before + 1_000_000 * (1 + ARRIVAL_MARGIN) / RATE, (
            "let through without a slot of its own"
        )
    finally:
        reader.close()
