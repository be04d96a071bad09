"""Provider tasks and their soft time limit, in memory: a poll task, a balance or catalog
run, a key probe run start a call only when it can end, its retries included, before the
limit, and hand back what they have no time for; a call abandoned at the limit counts
against the provider like the timeout it is. The limit itself is a real timer signal in
this process (``tests.support.soft_limit``), as the pool's is in a worker's child; the
panel takes real seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import ColumnElement, select, update

from tests.support.soft_limit import soft_limit_after
from tests.usecases.helpers import add_provider, poll_due, track
from tracker.config import Settings
from tracker.db.models import Order, Provider
from tracker.providers.catalog import check_balances, sync_due_catalogs
from tracker.providers.gateway import Gateway
from tracker.providers.health import KEY_PAUSE_REASON
from tracker.providers.key_probe import probe_due_keys
from tracker.testing import (
    InMemoryRateLimiter,
    MemoryDatabase,
    ScriptedPanel,
    SettableClock,
    held_then_answered,
    timed_out_after,
)

ORDER_IDS = [201, 202, 203]


@pytest.fixture
def short_calls(settings: Settings) -> Settings:
    """Calls bounded at 1.1 s (the read timeout after the 0.1 s connect); the soft limit at 4 s."""
    return replace(
        settings, http_connect_timeout=0.1, http_read_timeout=1.0, http_deadline=1.0, task_soft_time_limit=4.0
    )


def gateway_for(settings: Settings, limiter: InMemoryRateLimiter, panel: ScriptedPanel) -> Iterator[Gateway]:
    gateway = Gateway(settings, limiter, transport=panel)
    yield gateway
    gateway.close()


@pytest.fixture
def short_gateway(short_calls: Settings, limiter: InMemoryRateLimiter, panel: ScriptedPanel) -> Iterator[Gateway]:
    yield from gateway_for(short_calls, limiter, panel)


def failures(db: MemoryDatabase) -> int:
    with db.unit_of_work(read_only=True) as session:
        return int(session.scalar(select(Provider.consecutive_failures)) or 0)


def due_in(db: MemoryDatabase, now: datetime) -> list[float]:
    """Seconds from ``now`` until each tracked order is due."""
    with db.unit_of_work(read_only=True) as session:
        return [(due - now).total_seconds() for due in session.scalars(select(Order.next_poll_at))]


def claimed(db: MemoryDatabase) -> int:
    with db.unit_of_work(read_only=True) as session:
        return len(session.scalars(select(Order.id).where(Order.claim_id.is_not(None))).all())


def assert_counted_as_a_failure(db: MemoryDatabase, clock: SettableClock, settings: Settings) -> None:
    """One failure for the circuit; the orders back, after the failure back-off (here
    37.5 to 75 s), not one plain interval (300 s)."""
    assert failures(db) == 1
    assert all(0 < seconds < settings.poll_interval for seconds in due_in(db, clock())), due_in(db, clock())
    assert claimed(db) == 0


@contextmanager
def abandoned_at_the_soft_limit(panel: ScriptedPanel) -> Iterator[None]:
    """The panel holds the next call past every timeout (as one trickling its headers
    byte by byte can); the soft limit comes after 0.5 s and must be raised."""
    panel.script(held_then_answered(30))
    try:
        with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.5):
            yield
    finally:
        panel.release_held()


def test_a_call_with_its_retries_ends_before_the_soft_limit_and_counts_as_a_failure(
    db: MemoryDatabase, short_calls: Settings, short_gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    """Each try of the status call times out after 1 s. Two retries (0.5 s and 1 s apart)
    would end after 4.5 s, past the 4 s soft limit; a retry is made only when it can end
    before the limit, less the 2 s kept to write. So the call ends with its timeout, the
    provider's circuit counts it, and the rows come back after the failure back-off."""
    track(db, clock, ORDER_IDS)
    panel.script(timed_out_after(1.0), timed_out_after(1.0), timed_out_after(1.0))
    started = time.monotonic()
    with soft_limit_after(short_calls.task_soft_time_limit):
        [summary] = poll_due(db, short_calls, short_gateway, clock)
    assert time.monotonic() - started < short_calls.task_soft_time_limit
    assert summary.error == "ProviderTimeout"
    assert_counted_as_a_failure(db, clock, short_calls)


def test_a_call_abandoned_at_the_soft_limit_counts_as_a_failure(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    """The soft limit abandons a call the panel holds past every timeout: that is the
    provider's timeout too, and its rows get the failure back-off. Without it a hanging
    panel would never open its circuit and its rows would come back after one plain
    interval, forever."""
    track(db, clock, ORDER_IDS)
    with abandoned_at_the_soft_limit(panel):
        poll_due(db, settings, gateway, clock)
    assert_counted_as_a_failure(db, clock, settings)


def test_no_call_starts_that_could_outlast_the_soft_limit(
    db: MemoryDatabase, short_calls: Settings, limiter: InMemoryRateLimiter, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    """A call bounded at 1.1 s, with 2 s kept to write, does not fit in 3 s of soft limit:
    no call goes out, and the rows go back due now, with nothing held against the provider."""
    tight = replace(short_calls, task_soft_time_limit=3.0)
    for gateway in gateway_for(tight, limiter, panel):
        track(db, clock, ORDER_IDS)
        for order_id in ORDER_IDS:
            panel.set_order(order_id, "In progress", remains=10)
        [summary] = poll_due(db, tight, gateway, clock)
    assert panel.calls == []
    assert summary.applied == 0
    assert failures(db) == 0
    assert due_in(db, clock()) == [0.0] * len(ORDER_IDS)
    assert claimed(db) == 0


def test_calls_stop_once_the_next_might_outlast_the_soft_limit(
    db: MemoryDatabase, short_calls: Settings, limiter: InMemoryRateLimiter, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    """One order per status call (batch size 1), the first call alone (the provider failed
    last time: slow start). It takes 0.9 s; after it 2.6 s of the 3.5 s are left, less than
    a call's 1.1 s and the 2 s kept to write: the other orders go back due now, untouched."""
    tight = replace(short_calls, task_soft_time_limit=3.5)
    with db.unit_of_work() as session:
        provider = session.get_one(Provider, provider_id)
        provider.batch_size = 1
        provider.consecutive_failures = 1
    track(db, clock, ORDER_IDS)
    for order_id in ORDER_IDS:
        panel.set_order(order_id, "In progress", remains=10)
    panel.script(held_then_answered(0.9))
    for gateway in gateway_for(tight, limiter, panel):
        [summary] = poll_due(db, tight, gateway, clock)
    assert len(panel.calls) == 1
    assert summary.applied == 1
    assert failures(db) == 0
    assert sorted(due_in(db, clock())) == [0.0, 0.0, pytest.approx(tight.poll_interval, rel=0.15)]
    assert claimed(db) == 0


# --- upkeep: balance checks, catalog syncs, key probes -----------------------------------

UPKEEP_PROVIDERS = ["panel", "p2", "p3", "p4", "p5"]


@pytest.fixture
def five_providers(db: MemoryDatabase, settings: Settings, clock: SettableClock, provider_id: int) -> list[int]:
    return [provider_id, *(add_provider(db, settings, clock, name) for name in UPKEEP_PROVIDERS[1:])]


def providers_where(db: MemoryDatabase, condition: ColumnElement[bool]) -> list[str]:
    with db.unit_of_work(read_only=True) as session:
        return sorted(session.scalars(select(Provider.name).where(condition)))


def test_a_balance_run_checks_no_provider_it_cannot_finish_before_the_soft_limit(
    db: MemoryDatabase, short_calls: Settings, short_gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, five_providers: list[int],
) -> None:
    """Each balance call takes 0.9 s; one may take 1.1 s, and 2 s are kept to write: with a
    4.5 s soft limit, a provider is started while 3.1 s are left. Started one after the
    other regardless, the fifth would be cut off by the limit."""
    limit = replace(short_calls, task_soft_time_limit=4.5)
    panel.script(*(held_then_answered(0.9) for _ in UPKEEP_PROVIDERS))
    started = time.monotonic()
    with soft_limit_after(limit.task_soft_time_limit):
        checked = check_balances(limit, short_gateway, clock(), unit_of_work=db.unit_of_work)
    assert time.monotonic() - started < limit.task_soft_time_limit
    assert 1 <= checked < len(UPKEEP_PROVIDERS)
    # The rest are still due: the next run takes them.
    assert len(providers_where(db, Provider.balance_checked_at.is_(None))) == len(UPKEEP_PROVIDERS) - checked


@pytest.mark.parametrize("run", [check_balances, sync_due_catalogs], ids=["balance", "catalog"])
def test_an_upkeep_call_abandoned_at_the_soft_limit_counts_against_the_provider(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock,
    provider_id: int, run: Callable[..., object],
) -> None:
    with abandoned_at_the_soft_limit(panel):
        run(settings, gateway, clock(), unit_of_work=db.unit_of_work)
    assert failures(db) == 1
    assert providers_where(db, Provider.catalog_synced_at.is_not(None) | Provider.balance_checked_at.is_not(None)) == []


def test_a_catalog_run_syncs_no_provider_it_cannot_finish_before_the_soft_limit(
    db: MemoryDatabase, short_calls: Settings, short_gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, five_providers: list[int],
) -> None:
    """Two calls per provider (catalog, balance), 0.5 s each; 2 x 1.1 s and 2 s to write
    must fit: with 5.5 s of soft limit the first and second providers go, not the rest."""
    limit = replace(short_calls, task_soft_time_limit=5.5)
    panel.script(*(held_then_answered(0.5) for _ in range(2 * len(UPKEEP_PROVIDERS))))
    started = time.monotonic()
    with soft_limit_after(limit.task_soft_time_limit):
        results = sync_due_catalogs(limit, short_gateway, clock(), unit_of_work=db.unit_of_work)
    assert time.monotonic() - started < limit.task_soft_time_limit
    assert 1 <= len(results) < len(UPKEEP_PROVIDERS)
    assert len(providers_where(db, Provider.catalog_synced_at.is_(None))) == len(UPKEEP_PROVIDERS) - len(results)


def test_a_key_probe_run_hands_back_the_probes_it_has_no_time_for(
    db: MemoryDatabase, short_calls: Settings, short_gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, five_providers: list[int],
) -> None:
    """Every provider is paused for its key and due for a probe, each probe's call takes
    0.9 s: the run probes while a call and the write still fit in its 4.5 s, and hands the
    other claims back, due now (not after their next delay)."""
    limit = replace(short_calls, task_soft_time_limit=4.5)
    with db.unit_of_work() as session:
        session.execute(
            update(Provider).values(paused=True, paused_reason=KEY_PAUSE_REASON, key_probe_at=clock(), key_probe_failures=0)
        )
    panel.script(*(held_then_answered(0.9) for _ in UPKEEP_PROVIDERS))
    started = time.monotonic()
    with soft_limit_after(limit.task_soft_time_limit):
        outcomes = probe_due_keys(limit, short_gateway, clock, unit_of_work=db.unit_of_work)
    assert time.monotonic() - started < limit.task_soft_time_limit
    probed = sum(outcomes.values())
    assert 1 <= probed < len(UPKEEP_PROVIDERS)
    assert outcomes == {"resumed": probed}
    assert len(providers_where(db, Provider.key_probe_at <= clock())) == len(UPKEEP_PROVIDERS) - probed
