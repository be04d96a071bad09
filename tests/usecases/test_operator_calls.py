"""The operator's own provider calls, on the use cases the CLI runs: a cancel (which spends
the shop's standing with the provider) and a catalog sync."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.usecases.helpers import track
from tracker.config import Settings
from tracker.db.models import CancelRequest, Provider, Service
from tracker.apiv2.errors import ProviderError
from tracker.orders.cancel import ACCEPTED, REFUSED, UNKNOWN, cancel_orders
from tracker.providers.catalog import SyncResult, sync_catalog
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.testing import (
    InMemoryCallMetrics,
    InMemoryRateLimiter,
    MemoryDatabase,
    ScriptedPanel,
    SettableClock,
    cut_after_acting,
    html_page,
)


CATALOG = [
    {"service": 1, "name": "Followers", "type": "Default", "category": "Instagram", "rate": "0.90",
     "min": "10", "max": "1000", "refill": True, "cancel": True},
    {"service": 2, "name": "Likes", "type": "Default", "category": "Instagram", "rate": "0.20",
     "min": "10", "max": "5000", "refill": False, "cancel": False},
]


def sync(db: MemoryDatabase, settings: Settings, gateway: Gateway, clock: SettableClock, provider_id: int,
         on_step: Callable[[str], None] = lambda _step: None) -> SyncResult:
    with db.unit_of_work(read_only=True) as session:
        access = ProviderAccess.of(session.get_one(Provider, provider_id), settings)
    return sync_catalog(access, settings, gateway, clock(), on_step, unit_of_work=db.unit_of_work)


@pytest.fixture
def catalog(db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
            clock: SettableClock, provider_id: int) -> None:
    panel.services = CATALOG
    sync(db, settings, gateway, clock, provider_id)
    panel.calls.clear()


def cancel(db: MemoryDatabase, settings: Settings, gateway: Gateway, clock: SettableClock, *ids: int) -> dict[str, str]:
    lines = cancel_orders("panel", list(ids), settings=settings, gateway=gateway, clock=clock, unit_of_work=db.unit_of_work)
    return {line.order_id: line.outcome for line in lines}


@pytest.mark.usefixtures("catalog")
def test_a_cancel_goes_out_once_and_a_refused_one_says_why(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, provider_id: int
) -> None:
    track(db, clock, [201, 202], service=1)
    panel.set_order(201, "In progress", remains=50)
    panel.set_order(202, "Completed")
    assert cancel(db, settings, gateway, clock, 201, 202) == {"201": ACCEPTED, "202": REFUSED}
    assert panel.cancels_made == [201]
    # Asked again: the accepted cancel is not sent again.
    assert cancel(db, settings, gateway, clock, 201) == {"201": REFUSED}
    assert panel.actions().count("cancel") == 1


@pytest.mark.usefixtures("catalog")
def test_a_cancel_whose_answer_was_lost_is_never_sent_again(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, provider_id: int
) -> None:
    track(db, clock, [301], service=1)
    panel.set_order(301, "Pending", remains=100)
    panel.script(cut_after_acting())
    # The panel canceled the order; the connection dropped before its answer arrived.
    assert cancel(db, settings, gateway, clock, 301) == {"301": UNKNOWN}
    assert panel.cancels_made == [301]
    with db.unit_of_work(read_only=True) as session:
        # The intent, written before the call, is what tells the next run not to send it.
        assert session.scalars(select(CancelRequest.outcome)).all() == [UNKNOWN]
    assert cancel(db, settings, gateway, clock, 301) == {"301": REFUSED}
    assert panel.actions().count("cancel") == 1


def test_a_catalog_sync_is_rate_limited_counted_and_stored(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock,
    provider_id: int, limiter: InMemoryRateLimiter, metrics: InMemoryCallMetrics,
) -> None:
    panel.services = CATALOG
    steps: list[str] = []
    result = sync(db, settings, gateway, clock, provider_id, steps.append)
    assert (result.services, result.added, result.with_refill, result.with_cancel) == (2, 2, 1, 1)
    assert result.balance == Decimal("100.84")
    assert len(steps) == 3
    assert [provider for provider, _rate in limiter.acquired] == [provider_id, provider_id]
    assert [call.action for call in metrics.of(provider_id)] == ["services", "balance"]
    with db.unit_of_work(read_only=True) as session:
        assert session.scalars(select(Service.service_id).order_by(Service.service_id)).all() == [1, 2]
        assert session.get_one(Provider, provider_id).balance == Decimal("100.84")


def test_only_beats_sync_counts_a_failure_in_the_providers_health(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock,
    provider_id: int,
) -> None:
    with db.unit_of_work(read_only=True) as session:
        access = ProviderAccess.of(session.get_one(Provider, provider_id), settings)

    def failures_after_a_failed_sync(**options: bool) -> int:
        panel.script(html_page())
        with pytest.raises(ProviderError):
            sync_catalog(access, settings, gateway, clock(), unit_of_work=db.unit_of_work, **options)
        with db.unit_of_work(read_only=True) as session:
            return session.get_one(Provider, provider_id).consecutive_failures

    # The operator's sync reports the failure and leaves the provider's health alone.
    assert failures_after_a_failed_sync(record_health=False) == 0
    assert failures_after_a_failed_sync() == 1
