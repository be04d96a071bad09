"""`tracker exporter` during a real run: the sim over HTTP, a real worker and beat, Redis,
and the exporter as its own process, scraped over HTTP and parsed with
prometheus_client's parser. Every value is checked against the database (orders,
refills, provider state, balance) or against what the sim served (calls)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import add_provider, count_orders, running_tracker, shop_client
from tests.support import processes
from tests.support.network import answers
from tests.support.processes import wait_until
from tracker.apiv2.client import CallRecord
from tracker.apiv2.php_noise import PhpSeverity
from tracker.cli.main import main as tracker_cli
from tracker.config import get_settings
from tracker.db.models import Order, OutboxEvent, Provider, Refill, RefillRequest
from tracker.db.session import unit_of_work
from tracker.metrics import ACTIONS, OUTCOMES, SEVERITIES, CallMetrics
from tracker.ops.exporter import TrackerCollector
from tracker.ops.bundled_redis import free_port
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

ORDERS = 60
DROPS = 2
LABEL_NAMES = {"provider", "status", "action", "outcome", "state", "currency", "severity"}
Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def exporter_command(port: int) -> list[str]:
    return [sys.executable, "-m", "tracker.cli.main", "exporter", "--port", str(port)]


@contextmanager
def running_exporter(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = processes.start("exporter", exporter_command(port), env, log_dir)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/") or not proc.alive(), timeout=30, what="the exporter")
        assert proc.alive(), proc.output()
        yield url
    finally:
        proc.stop()
    assert TEST_API_KEY not in proc.output()


def scrape(url: str) -> tuple[str, Samples]:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.documentation, f"{family.name} has no HELP"
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return response.text, samples


def by(samples: Samples, name: str, *labels: str, **where: str) -> dict[tuple[str, ...], float]:
    """One metric's values keyed by the given labels, among the samples matching ``where``."""
    result = {}
    for label_set, value in samples.get(name, {}).items():
        values = dict(label_set)
        if all(values.get(key) == wanted for key, wanted in where.items()):
            result[tuple(values[label] for label in labels)] = value
    return result


def check_labels_are_bounded(text: str, samples: Samples, sim_url: str) -> None:
    assert TEST_API_KEY not in text
    assert sim_url not in text
    for name, series in samples.items():
        for label_set in series:
            labels = dict(label_set)
            assert set(labels) <= LABEL_NAMES, (name, labels)
            if "action" in labels:
                assert labels["action"] in ACTIONS, labels
            if "outcome" in labels:
                assert labels["outcome"] in OUTCOMES, labels
            if "severity" in labels:
                assert labels["severity"] in (*SEVERITIES, "unknown"), labels


def database_orders() -> dict[tuple[str, str], float]:
    with unit_of_work() as session:
        rows = session.execute(
            select(Provider.name, Order.status, func.count()).join(Provider).group_by(Provider.name, Order.status)
        ).all()
    return {(name, status or "not polled yet"): float(number) for name, status, number in rows}


def database_refills() -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    with unit_of_work() as session:
        refills = session.execute(
            select(Provider.name, Refill.status, func.count()).join(Provider).group_by(Provider.name, Refill.status)
        ).all()
        requests_ = session.execute(
            select(Provider.name, RefillRequest.state, func.count())
            .join(Provider)
            .group_by(Provider.name, RefillRequest.state)
        ).all()
    return (
        {(name, status or "not polled yet"): float(number) for name, status, number in refills},
        {(name, state): float(number) for name, state, number in requests_},
    )


def refills_final() -> int:
    with unit_of_work() as session:
        return int(session.scalar(select(func.count()).select_from(Refill).where(Refill.final.is_(True))) or 0)


def completed_orders(provider: str) -> list[int]:
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(Order.external_id)
                .join(Provider)
                .where(Provider.name == provider, Order.status == "Completed")
                .order_by(Order.external_id)
            )
        )


def provider_row(name: str) -> Provider:
    with unit_of_work() as session:
        provider = session.scalars(select(Provider).where(Provider.name == name)).one()
        session.expunge(provider)
        return provider


def test_a_scrape_during_a_run_matches_the_database(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard", speed=20.0, seed=33) as sim, SimServer(
        dialect="standard", api_key="the-only-key-this-panel-takes"
    ) as locked:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        # The catalog (service 1 has refill) and the balance, as an operator starts.
        assert tracker_cli(["provider", "sync", "panel"]) == 0
        # The operator's sync calls through the workers' gateway: Redis counts them too.
        ids = sim.seed_orders(count=ORDERS, service=1, pending_s=2, progress_s=8)
        # A panel in debug mode for a moment: answers read from among PHP diagnostics.
        sim.inject_fault("php_warning", actions=["status"], count=2)
        sim.inject_fault("php_deprecated", actions=["status"], count=1)
        shop = shop_client(broker_url)
        with running_tracker(tracker_env, tmp_path / "logs"), running_exporter(tracker_env, tmp_path / "logs") as url:
            shop.send_task("tracker.track_orders", args=["panel", ids], kwargs={"service": 1})
            wait_until(lambda: count_orders("panel") == ORDERS, timeout=30, what="the orders tracked")

            # Mid-run: every tracked order is counted once, whatever its status now.
            text, samples = scrape(url)
            check_labels_are_bounded(text, samples, sim.url)
            assert sum(by(samples, "tracker_orders", "status", provider="panel").values()) == ORDERS

            wait_until(lambda: count_orders("panel", final=True) == ORDERS, timeout=60, what="all orders final")
            for order_id in completed_orders("panel")[:DROPS]:
                sim.drop(order_id, 5)
                shop.send_task("tracker.report_drop", args=["panel", order_id])
            wait_until(lambda: refills_final() == DROPS, timeout=60, what="the refills final")

            # A panel that refuses our key: its provider pauses at the first answer.
            add_provider("locked", locked.url, monkeypatch)
            shop.send_task("tracker.track_orders", args=["locked", [11, 12, 13]])
            wait_until(lambda: provider_row("locked").paused, timeout=30, what="the provider paused")

            # Quiet now (everything final or paused): the scrape equals the database.
            text, samples = scrape(url)
            check_labels_are_bounded(text, samples, sim.url)
            orders = database_orders()
            assert by(samples, "tracker_orders", "provider", "status") == orders
            assert orders[("locked", "not polled yet")] == 3
            assert by(samples, "tracker_orders_active", "provider") == {("panel",): 0, ("locked",): 3}
            refills, refill_requests = database_refills()
            assert sum(refills.values()) == DROPS
            assert by(samples, "tracker_refills", "provider", "status") == refills
            assert by(samples, "tracker_refill_requests", "provider", "state") == refill_requests
            with unit_of_work() as session:
                pending = session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.final.is_(False)))
            assert by(samples, "tracker_outbox_events", "state") == {("pending",): pending, ("failed",): 0}

            # Provider state: as `tracker stats` sees it.
            assert by(samples, "tracker_provider_circuit_state", "provider") == {("panel",): 0, ("locked",): 3}
            assert by(samples, "tracker_provider_paused", "provider") == {("panel",): 0, ("locked",): 1}
            assert by(samples, "tracker_provider_healthy", "provider") == {("panel",): 1, ("locked",): 0}
            assert by(samples, "tracker_poll_lag_seconds", "provider", provider="panel") == {("panel",): 0}
            assert by(samples, "tracker_poll_lag_limit_seconds", "provider", provider="panel") == {("panel",): 60}
            panel = provider_row("panel")
            assert panel.balance is not None and panel.balance_currency
            assert by(samples, "tracker_provider_balance", "provider", "currency") == {
                ("panel", panel.balance_currency): float(panel.balance)
            }

            # Calls: the workers' counters in Redis, against what each sim served.
            calls = by(samples, "tracker_provider_calls_total", "action", "outcome", provider="panel")
            served = sim.stats()
            assert sum(calls.values()) == served["all"]["calls"]
            assert {outcome for _, outcome in calls} == {"ok"}
            assert calls[("status", "ok")] == served["actions"]["status"]["calls"]
            ids_sent = by(samples, "tracker_provider_call_ids_total", "action", provider="panel")
            assert sum(ids_sent.values()) == served["all"]["ids_total"]
            refused = by(samples, "tracker_provider_calls_total", "action", "outcome", provider="locked")
            assert set(refused) == {("status", "InvalidKey")}
            assert sum(refused.values()) == locked.stats()["all"]["calls"] >= 1
            # However many status calls the run took, each fault fired is one salvaged answer.
            fired = served["faults_fired"]
            assert fired.get("php_warning", 0) >= 1
            assert by(samples, "tracker_provider_salvaged_answers_total", "provider", "severity") == {
                ("panel", "deprecated"): fired.get("php_deprecated", 0), ("panel", "notice"): 0,
                ("panel", "warning"): fired["php_warning"],
                ("locked", "deprecated"): 0, ("locked", "notice"): 0, ("locked", "warning"): 0,
            }
            assert by(samples, "tracker_database_up") == by(samples, "tracker_broker_up") == {(): 1}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unreachable_database_or_broker_is_reported_not_hidden(
    tracker_env: dict[str, str], tmp_path: Path
) -> None:
    broker_down = {**tracker_env, "TRACKER_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with running_exporter(broker_down, tmp_path / "broker-down") as url:
        _, samples = scrape(url)
    assert by(samples, "tracker_database_up") == {(): 1} and by(samples, "tracker_broker_up") == {(): 0}
    assert "tracker_provider_calls_total" not in samples

    database_down = {**tracker_env, "TRACKER_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    with running_exporter(database_down, tmp_path / "database-down") as url:
        text, samples = scrape(url)
    assert set(samples) == {"tracker_database_up"} and by(samples, "tracker_database_up") == {(): 0}
    assert "nobody" not in text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_salvaged_answers_counted_before_severities_were_show_as_unknown(
    tracker_env: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Totals an older tracker wrote (no severity) stay counted, under ``unknown``."""
    add_provider("panel", "http://127.0.0.1:9/api/v2", monkeypatch)
    provider = provider_row("panel")
    metrics = CallMetrics.from_url(broker_url)
    redis.Redis.from_url(broker_url).hincrby(f"tracker:call-totals:{provider.id}", "salvaged", 3)
    metrics.record(provider.id, CallRecord("status", 4, 0.01, None, PhpSeverity.WARNING))
    families = {family.name: family for family in TrackerCollector(get_settings(), metrics).collect()}
    salvaged = {
        sample.labels["severity"]: sample.value
        for sample in families["tracker_provider_salvaged_answers"].samples
        if sample.name.endswith("_total")
    }
    assert salvaged == {"deprecated": 0, "notice": 0, "warning": 1, "unknown": 3}
