"""The key probe's use case against a real database (SQLite and PostgreSQL) and the sim
over HTTP, on a clock the test sets: when a probe is due, what each answer does to the
pause, that an operator's pause is never probed, and that an operator's new key wins
over a probe that was out when it was set."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import select

from tests.integration.helpers import add_provider
from tracker.core.clock import utcnow
from tracker.config import Settings, get_settings
from tracker.db.migrate import script_location
from tracker.db.models import OutboxEvent, Provider
from tracker.db.session import get_engine, unit_of_work
from tracker.db.types import UTCDateTime
from tracker.apiv2.errors import InvalidKey
from tracker.sim.server import SimServer
from tracker.polling.dispatch_runs import run_dispatcher
from tracker.providers.gateway import Gateway
from tracker.providers.key_probe import ProbeOutcome, claim_due_probes, probe_due_keys, probe_key
from tracker.providers.health import record_failure
from tracker.providers.registry import ProviderSpec, upsert_provider

pytestmark = pytest.mark.integration

BASE = 60.0
CAP = 1800.0


@pytest.fixture
def settings(tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    # Alerts are recorded only with a sink; nobody consumes this one.
    monkeypatch.setenv("TRACKER_EVENT_TASK", "shop.tracker_event")
    from tracker.config import reset_settings

    reset_settings()
    return get_settings()


@pytest.fixture
def sim(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    with SimServer(dialect="standard", speed=1e-6, balance=Decimal("7.5")) as server:
        add_provider("panel", server.url, monkeypatch)
        yield server


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    gateway = Gateway(settings, rate_limiter=None)
    yield gateway
    gateway.close()


def panel() -> Provider:
    with unit_of_work() as session:
        provider = session.scalar(select(Provider).where(Provider.name == "panel"))
        assert provider is not None
        return provider


def reject_key(settings: Settings, now: datetime) -> None:
    with unit_of_work() as session:
        record_failure(session, panel().id, InvalidKey("status", "Invalid API key"), now, settings, None)


def balance_calls(sim: SimServer) -> int:
    return int(sim.stats()["actions"].get("balance", {}).get("calls", 0))


def alerts() -> list[str]:
    with unit_of_work() as session:
        return list(session.scalars(select(OutboxEvent.kind).order_by(OutboxEvent.id)))


def test_probes_back_off_while_the_key_is_rejected_and_resume_once_it_works(
    settings: Settings, sim: SimServer, gateway: Gateway
) -> None:
    paused_at = utcnow()
    sim.set_config(api_key="the-panel-forgot-ours")
    reject_key(settings, paused_at)
    provider = panel()
    assert provider.paused and provider.key_probe_at == paused_at + timedelta(seconds=BASE)
    # A late answer from a call in flight neither moves the probe nor alerts again.
    reject_key(settings, paused_at + timedelta(seconds=1))
    assert panel().key_probe_at == provider.key_probe_at
    assert alerts() == ["provider.paused"]

    assert probe_due_keys(settings, gateway, lambda: paused_at + timedelta(seconds=BASE - 1)) == {}
    assert balance_calls(sim) == 0, "no probe before it is due"
    now = paused_at + timedelta(seconds=BASE)
    for failures in range(1, 4):
        assert probe_due_keys(settings, gateway, lambda: now) == {"rejected": 1}
        provider = panel()
        assert provider.paused and provider.key_probe_failures == failures
        assert provider.key_probe_at == now + timedelta(seconds=BASE * 2**failures)
        assert probe_due_keys(settings, gateway, lambda: now) == {}, "one call per probe interval"
        now = provider.key_probe_at
    assert balance_calls(sim) == 3

    # A 5xx says nothing about the key: same delay again, not counted.
    sim.inject_fault("http_500", actions=["balance"])
    assert probe_due_keys(settings, gateway, lambda: now) == {"failed": 1}
    provider = panel()
    assert provider.paused and provider.key_probe_failures == 3
    assert provider.key_probe_at == now + timedelta(seconds=BASE * 2**3)
    sim.clear_faults()

    sim.set_config(api_key=None)
    due = provider.key_probe_at
    assert due is not None
    assert probe_due_keys(settings, gateway, lambda: due) == {"resumed": 1}
    resumed = panel()
    assert not resumed.paused and resumed.paused_reason is None
    assert (resumed.key_probe_at, resumed.key_probe_failures, resumed.circuit_open_until) == (None, 0, None)
    assert resumed.balance == Decimal("7.5"), "the probe's balance is kept"
    assert alerts() == ["provider.paused", "provider.resumed"]


def test_the_dispatcher_sends_the_probe_task_only_while_a_probe_is_due(
    settings: Settings, sim: SimServer
) -> None:
    """Key probes have no beat entry of their own: each dispatcher run looks (on the
    database's clock) and sends ``tracker.probe_keys`` once, only when one is due."""
    asked: list[str] = []

    def dispatch() -> int:
        return run_dispatcher(settings, lambda piece: None, send_key_probe=lambda: asked.append("probe"))

    dispatch()
    assert asked == [], "nothing paused"
    reject_key(settings, utcnow())
    dispatch()
    assert asked == [], "paused, its probe due in a minute"
    with unit_of_work() as session:
        session.execute(sa.update(Provider).values(key_probe_at=utcnow() - timedelta(seconds=1)))
    dispatch()
    assert asked == ["probe"], "due: one probe task per run"
    with unit_of_work() as session:
        session.execute(sa.update(Provider).values(paused=False, key_probe_at=None))
    dispatch()
    assert asked == ["probe"], "resumed"


def test_an_operators_pause_is_never_probed(settings: Settings, sim: SimServer, gateway: Gateway) -> None:
    with unit_of_work() as session:
        provider = session.get_one(Provider, panel().id)
        provider.paused, provider.paused_reason = True, "maintenance"
    reject_key(settings, utcnow())
    assert panel().key_probe_at is None and panel().paused_reason == "maintenance"
    assert probe_due_keys(settings, gateway, lambda: utcnow() + timedelta(days=365)) == {}
    assert panel().paused and balance_calls(sim) == 0


def test_a_new_key_set_while_a_probe_is_out_wins(
    settings: Settings, sim: SimServer, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused_at = utcnow()
    sim.set_config(api_key="the-new-key-0123")
    reject_key(settings, paused_at)
    with unit_of_work() as session:
        [claim] = claim_due_probes(session, settings, paused_at + timedelta(seconds=BASE))
    with unit_of_work() as session:
        # Claimed: a second worker finds nothing due.
        assert claim_due_probes(session, settings, paused_at + timedelta(seconds=BASE)) == []
        upsert_provider(session, ProviderSpec("panel", sim.url, "the-new-key-0123"), settings, utcnow())
    assert not panel().paused and panel().key_probe_at is None
    # The claimed probe still carries the old key: its rejection must not pause again.
    assert probe_key(claim, settings, gateway, utcnow) is ProbeOutcome.STALE
    assert not panel().paused


def test_the_migration_schedules_a_probe_for_a_provider_paused_over_its_key(
    database_url: str, settings: Settings
) -> None:
    config = Config()
    config.set_main_option("script_location", script_location())
    with get_engine(database_url).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    now = utcnow()
    providers = sa.table(
        "providers",
        *(sa.column(name) for name in ("name", "api_url", "api_key_encrypted", "key_hint", "paused_reason")),
        *(sa.column(name, sa.Integer()) for name in ("batch_size", "refill_days", "consecutive_failures")),
        sa.column("rate_limit", sa.Float()),
        sa.column("paused", sa.Boolean()),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    with get_engine(database_url).begin() as connection:
        for name, reason in (("rejected", "the provider rejected the API key"), ("held", "maintenance")):
            connection.execute(
                providers.insert().values(
                    name=name, api_url="http://127.0.0.1:9/api/v2", api_key_encrypted="x", key_hint="****",
                    batch_size=100, rate_limit=5.0, refill_days=30, paused=True, paused_reason=reason,
                    consecutive_failures=0, created_at=now, updated_at=now,
                )
            )
    with get_engine(database_url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with unit_of_work() as session:
        probe_at = dict(session.execute(select(Provider.name, Provider.key_probe_at)).all())
    assert probe_at["held"] is None
    assert probe_at["rejected"] is not None and probe_at["rejected"] >= now - timedelta(seconds=5)
