"""Provider faults, from the simulated provider over HTTP, against a real deployment:
two worker processes, beat, Redis, and a database.

Every faulty provider runs at the same time in one deployment, each on its own sim, so
the test also shows that one provider's trouble leaves the others alone (a healthy
provider runs beside them). For each fault the test checks:

- back-off with retries bounded by count: status calls over the fault window stay below
  a bound derived from the settings (circuit threshold x the client's own attempts per
  poll), not one call per tick;
- the circuit opens after exactly K consecutive failures (``TRACKER_CIRCUIT_FAILURES``),
  no call reaches the provider while it is open, and once the fault is cleared a probe
  closes it and the orders finish at their true status;
- 429: every worker stays away for Retry-After (gaps between calls, seen from the sim);
- an invalid key pauses the provider after one call, and ``tracker provider add NAME
  --key-env VAR`` with the right key resumes it;
- a refill whose answer is lost (cut JSON, a connection dropped after the panel acted or
  before, an answer slower than the read timeout) is never repeated: one call each, the
  request ends with its answer unknown, and the sim holds at most one refill.
"""

from __future__ import annotations

import inspect
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.helpers import add_provider, count_orders, print_figures, shop_client
from tests.support.databases import SERVER_DATABASES
from tests.support.cluster import Cluster
from tests.support.integrity import event_problems, first_problems, truth_problems
from tests.support.observe import SimCallLog, gaps
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.config import reset_settings
from tracker.db.models import Order, Provider, RefillRequest
from tracker.db.session import unit_of_work
from tracker.domain.health import OPEN_BASE_SECONDS
from tracker.provider.client import ProviderClient
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL as REFILL_SERVICE
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

CIRCUIT_FAILURES = 2
READ_TIMEOUT = 0.5
RETRY_AFTER = 6.0
ORDERS = 30
# Retries the provider client makes by itself for read-only calls after a transport
# error or a 5xx; each failed poll costs at most 1 + this many calls.
CLIENT_RETRIES: int = inspect.signature(ProviderClient.__init__).parameters["retries"].default

# provider name -> (fault kind, fault seconds, calls one failed poll may make)
CIRCUIT_FAULTS: dict[str, tuple[str, float | None, int]] = {
    "f-http500": ("http_500", None, 1 + CLIENT_RETRIES),
    "f-html": ("html", None, 1 + CLIENT_RETRIES),
    "f-json": ("broken_json", None, 1),
    "f-slow": ("slow", 4 * READ_TIMEOUT, 1 + CLIENT_RETRIES),
    "f-drop": ("drop_connection", None, 1 + CLIENT_RETRIES),
}
# provider name -> (fault on the refill action, seconds, refills the sim creates)
LOST_REFILL_ANSWERS: dict[str, tuple[str, float | None, int]] = {
    "r-json": ("broken_json", None, 1),
    "r-drop": ("act_then_drop", None, 1),
    "r-slow": ("slow", 5 * READ_TIMEOUT, 1),
    # Cut before the panel acted: the tracker cannot tell, so it is not repeated either.
    "r-cut": ("drop_connection", None, 0),
}
RIGHT_KEY = "sk-the-right-key-0e1d2c3b"


def provider_row(name: str) -> Provider:
    with unit_of_work() as session:
        provider = session.scalar(select(Provider).where(Provider.name == name))
        assert provider is not None
        return provider


def status_calls(sim: SimServer) -> int:
    return int(sim.stats()["actions"].get("status", {}).get("calls", 0))


def refill_request_of(provider: str, order_id: int) -> RefillRequest | None:
    with unit_of_work() as session:
        return session.scalar(
            select(RefillRequest)
            .join(Order, RefillRequest.order_id == Order.id)
            .join(Provider, Order.provider_id == Provider.id)
            .where(Provider.name == provider, Order.external_id == order_id)
        )


def refill_settled(provider: str, order_id: int) -> bool:
    request = refill_request_of(provider, order_id)
    return request is not None and request.final


@pytest.fixture
def fault_env(tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    extra = {
        "TRACKER_CIRCUIT_FAILURES": str(CIRCUIT_FAILURES),
        "TRACKER_HTTP_READ_TIMEOUT": str(READ_TIMEOUT),
        "TRACKER_REFILL_RETRY_BASE": "1",
        "TRACKER_REFILL_RETRY_CAP": "2",
    }
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return {**tracker_env, **extra}


# The server databases only keep the runtime modest (the circuit stays open 30 s):
# PostgreSQL and MariaDB, where workers update provider health under row locks. Every other fault file runs SQLite too.
@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_provider_faults_back_off_open_the_circuit_and_recover(
    fault_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        sims: dict[str, SimServer] = {}
        names = ["ok", *CIRCUIT_FAULTS, "f-429", "f-key", *LOST_REFILL_ANSWERS]
        for seed, name in enumerate(names, start=100):
            sims[name] = stack.enter_context(
                SimServer(dialect="standard", speed=1.0, seed=seed, natural_drops=False,
                          api_key=RIGHT_KEY if name == "f-key" else None)
            )
            add_provider(name, sims[name].url, monkeypatch, "--rate-limit", "20")
        for name in LOST_REFILL_ANSWERS:
            assert tracker_cli(["provider", "sync", name]) == 0

        ids = {
            name: sims[name].seed_orders(count=ORDERS, service=1, pending_s=2.0, progress_s=20.0)
            for name in ["ok", *CIRCUIT_FAULTS, "f-429", "f-key"]
        }
        refill_orders = {
            name: sims[name].seed_orders(count=1, service=REFILL_SERVICE, outcome="Completed", age_s=10_000)[0]
            for name in LOST_REFILL_ANSWERS
        }
        for name, (kind, seconds, _) in CIRCUIT_FAULTS.items():
            sims[name].inject_fault(kind, actions=["status"], seconds=seconds)
        sims["f-429"].inject_fault("rate_limit", actions=["status"], seconds=RETRY_AFTER)

        call_log = {name: SimCallLog(sims[name]) for name in [*CIRCUIT_FAULTS, "f-429"]}
        cluster = stack.enter_context(Cluster(fault_env, tmp_path / "logs"))
        cluster.workers("worker-1", "worker-2")
        cluster.beat()
        shop = shop_client(broker_url)
        started = time.monotonic()
        for name, order_ids in ids.items():
            shop.send_task("tracker.track_orders", args=[name, order_ids])
        for name, order_id in refill_orders.items():
            shop.send_task("tracker.track_orders", args=[name, [order_id]], kwargs={"service": REFILL_SERVICE})

        # --- lost refill answers -------------------------------------------------------
        wait_until(
            lambda: all(count_orders(name, final=True) == 1 for name in LOST_REFILL_ANSWERS),
            timeout=30, what="the refill providers' orders completed",
        )
        for name, (kind, seconds, _) in LOST_REFILL_ANSWERS.items():
            sims[name].drop(refill_orders[name], 5)
            sims[name].inject_fault(kind, count=1, actions=["refill"], seconds=seconds)
            shop.send_task("tracker.report_drop", args=[name, refill_orders[name]])

        # --- the circuit opens after K failures, and nothing is sent while it is open ---
        opened_at: dict[str, float] = {}
        calls_when_opened: dict[str, int] = {}

        def circuits_open() -> bool:
            for name in CIRCUIT_FAULTS:
                if name not in opened_at and provider_row(name).circuit_open_until is not None:
                    opened_at[name] = time.monotonic()
                    calls_when_opened[name] = status_calls(sims[name])
            return len(opened_at) == len(CIRCUIT_FAULTS)

        wait_until(circuits_open, timeout=40, interval=0.1, what="every faulty provider's circuit to open")
        invalid_key = provider_row("f-key")
        assert invalid_key.paused and invalid_key.paused_reason, "an invalid key pauses the provider"
        # A quiet period: the open circuits and the paused provider get no call at all.
        time.sleep(2)
        window = time.monotonic() - started
        for name, (kind, _, per_poll) in CIRCUIT_FAULTS.items():
            provider = provider_row(name)
            calls = status_calls(sims[name])
            assert provider.consecutive_failures == CIRCUIT_FAILURES, (name, provider.consecutive_failures)
            assert provider.circuit_open_until is not None
            assert CIRCUIT_FAILURES <= calls <= CIRCUIT_FAILURES * per_poll, (name, kind, calls)
            assert calls == calls_when_opened[name], f"{name}: {calls - calls_when_opened[name]} calls while open"
            figures[f"{name} calls"] = calls
        key_stats = sims["f-key"].stats()
        assert 1 <= status_calls(sims["f-key"]) <= 2, "an invalid key is not retried"
        assert key_stats["rejected_invalid_key"] == status_calls(sims["f-key"])
        figures["f-key calls"] = status_calls(sims["f-key"])

        # 429: every worker stays away for Retry-After, and nothing else counts it a failure.
        limited = call_log["f-429"].times("status")
        assert len(limited) >= 2, "the 429 provider was called again after its Retry-After"
        closest = min(gaps(limited))
        assert closest >= RETRY_AFTER, f"calls {closest:.2f}s apart despite Retry-After {RETRY_AFTER}"
        assert status_calls(sims["f-429"]) <= 1 + window / RETRY_AFTER
        assert provider_row("f-429").consecutive_failures == 0
        figures["f-429 calls"] = status_calls(sims["f-429"])
        figures["f-429 min gap s"] = round(closest, 2)
        figures["window s"] = round(window, 1)

        # --- recovery --------------------------------------------------------------------
        for name in [*CIRCUIT_FAULTS, "f-429"]:
            sims[name].clear_faults()
        monkeypatch.setenv("RIGHT_KEY", RIGHT_KEY)
        assert tracker_cli(["provider", "add", "f-key", "--url", sims["f-key"].url, "--key-env", "RIGHT_KEY"]) == 0
        assert not provider_row("f-key").paused
        cleared = time.monotonic()
        wait_until(
            lambda: all(count_orders(name, final=True) == ORDERS for name in ids),
            timeout=OPEN_BASE_SECONDS + 40, what="every order final after the faults cleared",
        )
        figures["s from clear to all final"] = round(time.monotonic() - cleared, 1)
        for name in CIRCUIT_FAULTS:
            provider = provider_row(name)
            assert provider.circuit_open_until is None and provider.consecutive_failures == 0, name
            # No call went out before the cool-down ended: the first one after is the probe.
            # (The circuit opened a moment before this test saw it: 0.5 s of slack.)
            probe = call_log[name].times("status", since=opened_at[name])
            assert probe, f"{name}: no probe after the circuit opened"
            assert probe[0] >= opened_at[name] - 0.5 + OPEN_BASE_SECONDS, (name, probe[0] - opened_at[name])
        for name, order_ids in ids.items():
            doubled = event_problems(name)
            assert not doubled, (name, first_problems(doubled))
            wrong = truth_problems(name, sims[name], order_ids)
            assert not wrong, (name, first_problems(wrong))

        # The lost refill answers: one call each, never repeated; the request ended with
        # its answer unknown, and the sim holds the refill only where it acted.
        for name, order_id in refill_orders.items():
            wait_until(partial(refill_settled, name, order_id), timeout=30, what=f"{name}'s refill request settled")
            request = refill_request_of(name, order_id)
            assert request is not None and request.state == "gave_up", (name, request and request.last_message)
            assert "answer unknown" in (request.last_message or ""), (name, request.last_message)
            truth = sims[name].truth([order_id])[order_id]
            assert truth is not None
            assert len(truth["refills"]) == LOST_REFILL_ANSWERS[name][2], (name, truth["refills"])
            refill_calls = sims[name].stats()["actions"]["refill"]["calls"]
            assert refill_calls == 1, (name, refill_calls)
            figures[f"{name} refill calls"] = refill_calls
    print_figures(f"provider faults {fault_env['TRACKER_DATABASE_URL'].split(':')[0].split('+')[0]}", figures)
