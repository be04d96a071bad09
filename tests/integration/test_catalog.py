"""The services catalog, fetched from the sim over HTTP and stored in a real database."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from tests.integration.helpers import add_provider
from tracker.core.clock import utcnow
from tracker.config import get_settings
from tracker.db.models import Provider, Service
from tracker.db.session import unit_of_work
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL, SERVICE_LIKES_PLAIN
from tracker.sim.server import SimServer
from tracker.providers.catalog import sync_due_catalogs
from tracker.providers.gateway import Gateway

pytestmark = pytest.mark.integration


def stored(service_id: int) -> list[tuple[str | None, Decimal | None]]:
    with unit_of_work() as session:
        rows = session.execute(
            select(Service.category, Service.rate).where(Service.service_id == service_id)
        ).all()
    return [(row.category, row.rate) for row in rows]


def test_a_service_listed_twice_is_stored_once_as_its_last_listing(
    tracker_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tracker.cli.main import main as tracker_cli

    caplog.set_level(logging.WARNING, logger="tracker.catalog")
    with SimServer(dialect="standard", speed=1.0, seed=7) as sim:
        # Real panels list one service in two categories, sometimes with another rate.
        sim.list_service_again(SERVICE_FOLLOWERS_REFILL_CANCEL, "Instagram Promo", rate="0.80")
        sim.list_service_again(SERVICE_LIKES_PLAIN, "Instagram Promo")
        add_provider("panel", sim.url, monkeypatch)

        # First sync, through the operator's command: every listed service is new.
        assert tracker_cli(["provider", "sync", "panel"]) == 0
        assert stored(SERVICE_FOLLOWERS_REFILL_CANCEL) == [("Instagram Promo", Decimal("0.80"))]
        assert stored(SERVICE_LIKES_PLAIN) == [("Instagram Promo", Decimal("0.25"))]
        warned = [record.getMessage() for record in caplog.records if "more than once" in record.getMessage()]
        assert warned, caplog.text
        assert f"{SERVICE_FOLLOWERS_REFILL_CANCEL}, {SERVICE_LIKES_PLAIN}" in warned[-1]

        # Later syncs from beat update stored services: the last listing still wins.
        sim.list_service_again(SERVICE_FOLLOWERS_REFILL_CANCEL, "Instagram Sale", rate="0.70")
        with unit_of_work() as session:
            session.execute(update(Provider).values(catalog_synced_at=None))
        gateway = Gateway(get_settings(), rate_limiter=None)
        try:
            [result] = sync_due_catalogs(get_settings(), gateway, utcnow())
        finally:
            gateway.close()
        assert stored(SERVICE_FOLLOWERS_REFILL_CANCEL) == [("Instagram Sale", Decimal("0.70"))]
        assert result.services == 5, "services counts distinct services, not listings"


def test_the_operators_sync_calls_through_the_workers_gateway(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tracker provider sync`` is the same sync as beat's: its calls are counted and go
    through the shared rate limit (it once built a bare client that did neither)."""
    import redis

    from tracker.cli.main import main as tracker_cli
    from tracker.metrics import OK, CallMetrics

    with SimServer(dialect="standard", speed=1.0, seed=7) as sim:
        add_provider("panel", sim.url, monkeypatch)
        assert tracker_cli(["provider", "sync", "panel"]) == 0
    with unit_of_work() as session:
        provider_id = session.scalars(select(Provider.id).where(Provider.name == "panel")).one()
    broker_url = get_settings().broker_url
    totals = CallMetrics.from_url(broker_url).totals([provider_id])[provider_id]
    assert totals.calls == {("services", OK): 1, ("balance", OK): 1}
    assert redis.Redis.from_url(broker_url).exists(f"tracker:rate:{provider_id}")
