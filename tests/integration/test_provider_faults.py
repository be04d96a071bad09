"""Provider faults, from the simulated provider over HTTP, against a real deployment:
two worker processes, beat, Redis, and a database.

Every faulty provider runs at the same time in one deployment, each on its own sim, so
the tests also show that one provider's trouble leaves the others alone (a healthy
provider runs beside them). The deployment runs once per database (the module's
``scenario`` fixture, which records what it saw at each moment); one test per fault then
checks it, so one fault's failure does not hide the others'. For each fault:

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.helpers import add_provider, count_orders, print_figures, shop_client
from tests.support.databases import SERVER_DATABASES
from tests.support.deployment import module_deployment
from tests.support.cluster import Cluster
from tests.support.integrity import event_problems, first_problems, truth_problems
from tests.support.observe import SimCallLog, gaps
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.db.models import Order, Provider, RefillRequest
from tracker.db.session import unit_of_work
from tracker.core.health import OPEN_BASE_SECONDS
from tracker.apiv2.client import ProviderClient
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL as REFILL_SERVICE
from tracker.sim.server import SimServer

# The shared scenario takes about 50 s per database.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


FAULT_ENV = {
    "TRACKER_CIRCUIT_FAILURES": str(CIRCUIT_FAILURES),
    "TRACKER_HTTP_READ_TIMEOUT": str(READ_TIMEOUT),
    "TRACKER_REFILL_RETRY_BASE": "1",
    "TRACKER_REFILL_RETRY_CAP": "2",
}


@dataclass
class Scenario:
    """What the deployment did, recorded at the moment each check is about."""

    sims: dict[str, SimServer]
    ids: dict[str, list[int]]
    refill_orders: dict[str, int]
    call_log: dict[str, SimCallLog]
    opened_at: dict[str, float] = field(default_factory=dict)
    calls_when_opened: dict[str, int] = field(default_factory=dict)
    # At the end of the quiet period, with every circuit open:
    # name -> (consecutive failures, circuit open, status calls).
    at_window: dict[str, tuple[int, bool, int]] = field(default_factory=dict)
    key_paused: tuple[bool, str | None] = (False, None)
    key_calls: int = 0
    key_rejected: int = 0
    limited_times: list[float] = field(default_factory=list)
    limited_calls: int = 0
    limited_failures: int = -1
    window: float = 0.0
    key_resumed: bool = False
    # phase -> why it did not complete; the tests that need it fail with this.
    errors: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def require(self, *phases: str) -> None:
        missing = [f"{phase}: {self.errors[phase]}" for phase in phases if phase in self.errors]
        if missing:
            pytest.fail("the scenario did not get there: " + "; ".join(missing))

    def run_phase(self, phase: str, step: Callable[[], None]) -> None:
        """Runs a waiting step; a failure is kept for the tests that need it, and the
        scenario goes on, so the other faults are still checked."""
        try:
            step()
        except (TimeoutError, AssertionError) as exc:
            self.errors[phase] = str(exc) or type(exc).__name__


# The server databases only keep the runtime modest (the circuit stays open 30 s):
# PostgreSQL and MariaDB, where workers update provider health under row locks. Every other fault file runs SQLite too.
@pytest.fixture(scope="module", params=SERVER_DATABASES)
def scenario(
    request: pytest.FixtureRequest, redis_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    tmp_path = tmp_path_factory.mktemp(f"faults-{request.param}")
    with module_deployment(request, redis_base_url, tmp_path, FAULT_ENV) as (env, monkeypatch), ExitStack() as stack:
        yield from _run_scenario(stack, env, env["TRACKER_BROKER_URL"], tmp_path, monkeypatch)


def _run_scenario(
    stack: ExitStack, fault_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scenario]:
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
    seen = Scenario(sims=sims, ids=ids, refill_orders=refill_orders, call_log=call_log)
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
    def refills_sent() -> None:
        wait_until(
            lambda: all(count_orders(name, final=True) == 1 for name in LOST_REFILL_ANSWERS),
            timeout=30, what="the refill providers' orders completed",
        )
        for name, (kind, seconds, _) in LOST_REFILL_ANSWERS.items():
            sims[name].drop(refill_orders[name], 5)
            sims[name].inject_fault(kind, count=1, actions=["refill"], seconds=seconds)
            shop.send_task("tracker.report_drop", args=[name, refill_orders[name]])

    seen.run_phase("refills sent", refills_sent)

    # --- the circuit opens after K failures, and nothing is sent while it is open ---
    def circuits_open() -> bool:
        for name in CIRCUIT_FAULTS:
            if name not in seen.opened_at and provider_row(name).circuit_open_until is not None:
                seen.opened_at[name] = time.monotonic()
                seen.calls_when_opened[name] = status_calls(sims[name])
        return len(seen.opened_at) == len(CIRCUIT_FAULTS)

    seen.run_phase(
        "circuits open",
        lambda: wait_until(circuits_open, timeout=40, interval=0.1, what="every faulty provider's circuit to open"),
    )
    invalid_key = provider_row("f-key")
    seen.key_paused = (invalid_key.paused, invalid_key.paused_reason)
    # A quiet period on purpose: the open circuits and the paused provider get no call at all.
    time.sleep(2)
    seen.window = time.monotonic() - started
    for name in CIRCUIT_FAULTS:
        provider = provider_row(name)
        seen.at_window[name] = (
            provider.consecutive_failures, provider.circuit_open_until is not None, status_calls(sims[name])
        )
    seen.key_calls = status_calls(sims["f-key"])
    seen.key_rejected = int(sims["f-key"].stats()["rejected_invalid_key"])
    seen.limited_times = call_log["f-429"].times("status")
    seen.limited_calls = status_calls(sims["f-429"])
    seen.limited_failures = provider_row("f-429").consecutive_failures

    # --- recovery --------------------------------------------------------------------
    for name in [*CIRCUIT_FAULTS, "f-429"]:
        sims[name].clear_faults()
    monkeypatch.setenv("RIGHT_KEY", RIGHT_KEY)
    assert tracker_cli(["provider", "add", "f-key", "--url", sims["f-key"].url, "--key-env", "RIGHT_KEY"]) == 0
    seen.key_resumed = not provider_row("f-key").paused
    cleared = time.monotonic()
    seen.run_phase("all final", lambda: wait_until(
        lambda: all(count_orders(name, final=True) == ORDERS for name in ids),
        timeout=OPEN_BASE_SECONDS + 40, what="every order final after the faults cleared",
    ))
    seen.figures["s from clear to all final"] = round(time.monotonic() - cleared, 1)
    for name, order_id in refill_orders.items():
        seen.run_phase(f"{name} settled", partial(
            wait_until, partial(refill_settled, name, order_id), timeout=30, what=f"{name}'s refill request settled"
        ))
    cluster.stop_all()
    yield seen
    print_figures(f"provider faults {fault_env['TRACKER_DATABASE_URL'].split(':')[0].split('+')[0]}", seen.figures)


@pytest.mark.parametrize("name", list(CIRCUIT_FAULTS))
def test_the_circuit_opens_after_k_failures_and_no_call_goes_out_while_open(scenario: Scenario, name: str) -> None:
    # Only this provider's circuit has to have opened, not every one's.
    assert name in scenario.opened_at, f"{name}: the circuit never opened ({scenario.errors.get('circuits open')})"
    kind, _, per_poll = CIRCUIT_FAULTS[name]
    failures, is_open, calls = scenario.at_window[name]
    assert failures == CIRCUIT_FAILURES, (name, failures)
    assert is_open
    # Back-off bounded by count: the threshold x the client's own attempts per poll.
    assert CIRCUIT_FAILURES <= calls <= CIRCUIT_FAILURES * per_poll, (name, kind, calls)
    when_opened = scenario.calls_when_opened[name]
    assert calls == when_opened, f"{name}: {calls - when_opened} calls while open"
    scenario.figures[f"{name} calls"] = calls


@pytest.mark.parametrize("name", list(CIRCUIT_FAULTS))
def test_a_probe_closes_the_circuit_after_the_cool_down(scenario: Scenario, name: str) -> None:
    assert name in scenario.opened_at, f"{name}: the circuit never opened ({scenario.errors.get('circuits open')})"
    scenario.require("all final")
    provider = provider_row(name)
    assert provider.circuit_open_until is None and provider.consecutive_failures == 0, name
    # No call went out before the cool-down ended: the first one after is the probe.
    # (The circuit opened a moment before the scenario saw it: 0.5 s of slack.)
    opened_at = scenario.opened_at[name]
    probe = scenario.call_log[name].times("status", since=opened_at)
    assert probe, f"{name}: no probe after the circuit opened"
    assert probe[0] >= opened_at - 0.5 + OPEN_BASE_SECONDS, (name, probe[0] - opened_at)


def test_an_invalid_key_pauses_the_provider_after_one_call_and_the_right_key_resumes_it(scenario: Scenario) -> None:
    paused, reason = scenario.key_paused
    assert paused and reason, "an invalid key pauses the provider"
    assert 1 <= scenario.key_calls <= 2, "an invalid key is not retried"
    assert scenario.key_rejected == scenario.key_calls
    scenario.figures["f-key calls"] = scenario.key_calls
    assert scenario.key_resumed


def test_a_429_keeps_every_worker_away_for_retry_after(scenario: Scenario) -> None:
    limited = scenario.limited_times
    assert len(limited) >= 2, "the 429 provider was called again after its Retry-After"
    closest = min(gaps(limited))
    assert closest >= RETRY_AFTER, f"calls {closest:.2f}s apart despite Retry-After {RETRY_AFTER}"
    assert scenario.limited_calls <= 1 + scenario.window / RETRY_AFTER
    # Nothing else counts it a failure.
    assert scenario.limited_failures == 0
    scenario.figures["f-429 calls"] = scenario.limited_calls
    scenario.figures["f-429 min gap s"] = round(closest, 2)
    scenario.figures["window s"] = round(scenario.window, 1)


@pytest.mark.parametrize("name", ["ok", *CIRCUIT_FAULTS, "f-429", "f-key"])
def test_every_order_ends_at_its_true_status_without_doubled_events(scenario: Scenario, name: str) -> None:
    scenario.require("all final")
    doubled = event_problems(name)
    assert not doubled, (name, first_problems(doubled))
    wrong = truth_problems(name, scenario.sims[name], scenario.ids[name])
    assert not wrong, (name, first_problems(wrong))


@pytest.mark.parametrize("name", list(LOST_REFILL_ANSWERS))
def test_a_lost_refill_answer_is_never_repeated(scenario: Scenario, name: str) -> None:
    """One call each, never repeated; the request ended with its answer unknown, and the
    sim holds the refill only where it acted."""
    scenario.require("refills sent", f"{name} settled")
    order_id = scenario.refill_orders[name]
    request = refill_request_of(name, order_id)
    assert request is not None and request.state == "gave_up", (name, request and request.last_message)
    assert "answer unknown" in (request.last_message or ""), (name, request.last_message)
    truth = scenario.sims[name].truth([order_id])[order_id]
    assert truth is not None
    assert len(truth["refills"]) == LOST_REFILL_ANSWERS[name][2], (name, truth["refills"])
    refill_calls = scenario.sims[name].stats()["actions"]["refill"]["calls"]
    assert refill_calls == 1, (name, refill_calls)
    scenario.figures[f"{name} refill calls"] = refill_calls
