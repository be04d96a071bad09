"""A rejected API key: the provider pauses, then a `balance` probe with back-off resumes
it by itself once the key works again. Real worker, beat, Redis and the sim over HTTP,
on SQLite and PostgreSQL.

- a few spurious "Invalid API key" answers: the provider pauses, resumes after probing,
  and every order still reaches its true final status;
- 2% of all answers "Invalid API key": every order still reaches its true final status;
- a really bad key: one `balance` call per probe, the probes back off (doubling, capped),
  and `tracker provider add --key-env` with the right key resumes at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import add_provider, count_orders, print_figures, shop_client
from tests.support.cluster import Cluster
from tests.support.integrity import event_problems, first_problems, truth_problems
from tests.support.observe import SimCallLog, gaps
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.config import reset_settings
from tracker.db.models import OutboxEvent, Provider
from tracker.db.session import unit_of_work
from tracker.core.health import key_probe_delay
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

PROBE_BASE = 1.0
PROBE_CAP = 4.0
RIGHT_KEY = "sk-the-right-key-7a6b5c4d"
# Arrival times at the sim are a few milliseconds off the worker's clock.
CLOCK_SLACK = 0.2


def provider_row(name: str) -> Provider:
    with unit_of_work() as session:
        provider = session.scalar(select(Provider).where(Provider.name == name))
        assert provider is not None
        return provider


def is_paused(name: str) -> bool:
    return provider_row(name).paused


def alert_kinds(name: str) -> list[str]:
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(OutboxEvent.kind)
                .join(Provider, OutboxEvent.provider_id == Provider.id)
                .where(Provider.name == name, OutboxEvent.kind.like("provider.%"))
                .order_by(OutboxEvent.id)
            )
        )


@pytest.fixture
def probe_env(tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    extra = {
        "TRACKER_KEY_PROBE_BASE": str(PROBE_BASE),
        "TRACKER_KEY_PROBE_CAP": str(PROBE_CAP),
        # Alerts go through the outbox; a task sink (nobody consumes it) keeps them recorded.
        "TRACKER_EVENT_TASK": "shop.tracker_event",
    }
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return {**tracker_env, **extra}


def assert_true_final(name: str, sim: SimServer, ids: list[int]) -> None:
    doubled = event_problems(name)
    assert not doubled, first_problems(doubled)
    wrong = truth_problems(name, sim, ids)
    assert not wrong, first_problems(wrong)


def assert_no_key_in(outputs: dict[str, str]) -> None:
    for process, text in outputs.items():
        assert TEST_API_KEY not in text and RIGHT_KEY not in text, f"{process} logged an API key"


@pytest.mark.slow  # about 18 s here (each database)
def test_a_spurious_invalid_key_pauses_the_provider_and_a_probe_resumes_it(
    probe_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = 40
    with SimServer(dialect="standard", speed=1.0, seed=41, natural_drops=False) as sim, Cluster(
        probe_env, tmp_path / "logs"
    ) as cluster:
        add_provider("flaky", sim.url, monkeypatch, "--rate-limit", "20")
        ids = sim.seed_orders(count=orders, service=1, pending_s=2.0, progress_s=12.0)
        # The panel's own database hiccups: three answers "Invalid API key", then it works.
        sim.inject_fault("invalid_key", count=3, actions=["status", "balance"])
        cluster.worker()
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["flaky", ids])

        wait_until(lambda: is_paused("flaky"), timeout=30, interval=0.05, what="the provider paused")
        paused_at = time.monotonic()
        wait_until(lambda: not is_paused("flaky"), timeout=30, interval=0.05, what="the provider resumed by itself")
        resumed_after = time.monotonic() - paused_at
        wait_until(lambda: count_orders("flaky", final=True) == orders, timeout=60, what="every order final")

        assert sim.stats()["faults_fired"].get("invalid_key") == 3
        provider = provider_row("flaky")
        assert provider.key_probe_at is None and provider.key_probe_failures == 0
        assert_true_final("flaky", sim, ids)
        assert alert_kinds("flaky") == ["provider.paused", "provider.resumed"]
        assert_no_key_in(cluster.output())
    print_figures(
        f"spurious invalid key {probe_env['TRACKER_DATABASE_URL'].split(':')[0]}",
        {"orders": orders, "s from pause to resume": round(resumed_after, 1),
         "balance calls": sim.stats()["actions"].get("balance", {}).get("calls", 0)},
    )


@pytest.mark.slow  # about 37 s here (each database)
def test_two_percent_invalid_key_answers_lose_no_order(
    probe_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = 300
    with SimServer(dialect="standard", speed=1.0, seed=42, natural_drops=False) as sim, Cluster(
        probe_env, tmp_path / "logs"
    ) as cluster:
        # Small batches: more calls per sweep, so more of them are rejected.
        add_provider("noisy", sim.url, monkeypatch, "--rate-limit", "50", "--batch-size", "10")
        # Orders live about 30 s: some 600 calls, about 12 of them rejected.
        ids = sim.seed_orders(count=orders, service=1, pending_s=5.0, progress_s=25.0)
        sim.inject_fault("invalid_key", probability=0.02)
        cluster.worker()
        cluster.beat()
        started = time.monotonic()
        shop_client(broker_url).send_task("tracker.track_orders", args=["noisy", ids])
        wait_until(lambda: count_orders("noisy", final=True) == orders, timeout=240, what="every order final")
        elapsed = time.monotonic() - started

        stats = sim.stats()
        rejected = stats["faults_fired"].get("invalid_key", 0)
        assert rejected >= 3, "the sim rejected too few calls for the test to mean anything"
        assert_true_final("noisy", sim, ids)
        kinds = alert_kinds("noisy")
        assert kinds.count("provider.paused") >= 1
        assert_no_key_in(cluster.output())
    print_figures(
        f"2% invalid key {probe_env['TRACKER_DATABASE_URL'].split(':')[0]}",
        {"orders": orders, "s to all final": round(elapsed, 1), "calls": stats["all"]["calls"],
         "rejected": rejected, "pauses": kinds.count("provider.paused"), "resumes": kinds.count("provider.resumed")},
    )


@pytest.mark.slow  # about 21 s here (each database)
def test_a_bad_key_costs_one_call_per_probe_and_a_new_key_resumes_at_once(
    probe_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = 20
    probes = 4
    figures: dict[str, Any] = {}
    with SimServer(dialect="standard", speed=1.0, seed=43, natural_drops=False, api_key=RIGHT_KEY) as sim, Cluster(
        probe_env, tmp_path / "logs"
    ) as cluster:
        calls = SimCallLog(sim)
        # The stored key is wrong: the sim rejects every call.
        add_provider("badkey", sim.url, monkeypatch, "--rate-limit", "20")
        ids = sim.seed_orders(count=orders, service=1, pending_s=1.0, progress_s=5.0)
        cluster.worker()
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["badkey", ids])

        wait_until(lambda: is_paused("badkey"), timeout=30, interval=0.05, what="the provider paused")
        paused_at = time.monotonic()
        wait_until(
            lambda: provider_row("badkey").key_probe_failures >= probes,
            timeout=60, what=f"{probes} probes rejected",
        )
        window = time.monotonic() - paused_at
        rejected_probes = provider_row("badkey").key_probe_failures
        balance = calls.times("balance", since=paused_at)
        # One call per probe; at most one more, a balance check already under way when
        # the provider paused.
        assert rejected_probes <= len(balance) <= rejected_probes + 1, (len(balance), rejected_probes)
        probe_times = balance[-rejected_probes:]
        # The pause came after the first call of all; the first probe waits the base delay.
        first_call = min(min(calls.times(action)) for action in ("status", "balance", "services") if calls.times(action))
        assert probe_times[0] >= first_call + key_probe_delay(0, base=PROBE_BASE, cap=PROBE_CAP) - CLOCK_SLACK
        # Each probe waits the doubled delay after the previous one, up to the cap.
        for failures, gap in enumerate(gaps(probe_times), start=1):
            wanted = key_probe_delay(failures, base=PROBE_BASE, cap=PROBE_CAP)
            assert gap >= wanted - CLOCK_SLACK, (failures, gap, wanted)
        assert not calls.times("status", since=probe_times[0]), "a paused provider got status calls"
        figures.update(
            {"window s": round(window, 1), "probes": rejected_probes, "balance calls": len(balance),
             "probe gaps s": [round(gap, 1) for gap in gaps(probe_times)]}
        )

        # The operator sets the right key: resumed at once, without waiting for a probe.
        monkeypatch.setenv("RIGHT_KEY", RIGHT_KEY)
        assert tracker_cli(["provider", "add", "badkey", "--url", sim.url, "--key-env", "RIGHT_KEY"]) == 0
        provider = provider_row("badkey")
        assert not provider.paused and provider.paused_reason is None
        assert provider.key_probe_at is None and provider.key_probe_failures == 0
        wait_until(lambda: count_orders("badkey", final=True) == orders, timeout=60, what="every order final")
        assert_true_final("badkey", sim, ids)
        assert alert_kinds("badkey")[0] == "provider.paused"
        assert_no_key_in(cluster.output())
    print_figures(f"bad key {probe_env['TRACKER_DATABASE_URL'].split(':')[0]}", figures)
