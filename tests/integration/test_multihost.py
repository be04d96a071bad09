"""Beyond one machine: three worker hosts, one beat, PostgreSQL, and Redis with a replica
and three Sentinels, through a host killed, a host cut off, a Redis failover and a
PostgreSQL restart, with 30,000 orders over three rate-limited providers.

The hosts are Linux network namespaces on a bridge in a private subnet of the test's
own (tests/support/netns.py); one host's clock runs 90 s ahead and one 60 s behind
(Debian's faketime). On the machine's side of the bridge: a PostgreSQL server of the
test's own (tests/support/postgres_server.py), a Redis master, its replica and three
Sentinels (tests/support/sentinel.py), one ``tracker sim`` process per provider, and
the shop's webhook endpoint. Orders poll every 30 s, with refills and webhooks on. In
turn:

1. host3's worker is killed with ``kill -9`` while it polls, and started again 5 s later
   (as a supervisor would);
2. host2 is cut off from Redis and PostgreSQL for 30 s (its packets dropped inside its
   namespace), then let back;
3. the Redis master is killed; Sentinel promotes the replica;
4. PostgreSQL restarts.

Between faults the sweep goes on and is measured. Then the sims let every order finish,
and the module's tests check what the run recorded: every order at its true final
status, no history row or outbox event twice, no refill sent twice, every webhook
delivered in order, calls per sweep, the providers' rate limits at the sims, and the
time to recover from each fault. The table of these figures is printed (and written to
TRACKER_FIGURES_FILE); docs/operations.md shows it.

Needs root, iproute2, nftables, redis-sentinel, faketime and PostgreSQL's server
binaries: skipped without them, failed in CI (``.ci/run`` installs them and sets
TRACKER_REQUIRE_MULTIHOST=1).
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from cryptography.fernet import Fernet

from tests.integration.helpers import print_figures
from tests.support import netns, postgres_server, processes, skewed_clock
from tests.support.multihost import (
    Sample,
    Sampler,
    SimProcess,
    SweepFigure,
    Window,
    calls_per_sweep,
    children_of,
    cpu_seconds,
    delivery_problems,
    longest_unpolled,
    peak_staleness,
    order_problems,
    outbox_problems,
    recovery,
)
from tests.support.netns import Host, PrivateNetwork
from tests.support.postgres_server import PostgresServer
from tests.support.processes import Proc, wait_until
from tests.support.sentinel import MASTER_NAME, SentinelGroup
from tests.support.shop_endpoint import ShopEndpoint
from tracker.cli.main import main as tracker_cli
from tracker.db import migrate
from tracker.ops.bundled_redis import free_port
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL, SERVICE_LIKES_PLAIN, SERVICE_VIEWS_REFILL

# The scenario takes about 5 minutes; pytest-timeout's limit leaves room for a slow machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(int(os.environ.get("TRACKER_MULTIHOST_TIMEOUT", "480")))]

# --- the deployment ------------------------------------------------------------------------------

# provider -> (sim dialect, rate limit in requests per second)
PROVIDERS: dict[str, tuple[str, float]] = {"standard": ("standard", 6.0), "singles": ("singles", 8.0), "promobox": ("promobox", 10.0)}
ORDERS_PER_PROVIDER = 10_000
# Of each provider's orders, these finish at once: drops and refills happen among them.
EARLY_ORDERS = 100
POLL_INTERVAL = 30.0
TICK = 1.0
LEASE = 20.0
# host -> wall clock offset in seconds (faketime); the beat runs on host1.
CLOCKS = {"host1": 90, "host2": -60, "host3": 0}
BEAT_HOST = "host1"
KILLED_HOST = "host3"
CUT_HOST = "host2"
WORKER_CHILDREN = 3
CUT_SECONDS = 30.0
RESTART_AFTER = 5.0
# An active order not polled for this long is late: one poll interval, its jitter (10 %)
# and a tick and a task's length to spare.
STALE_AFTER = 1.5 * POLL_INTERVAL
# Calls per sweep are held to 1.05 x ceil(N/100) where N is at least this: below, the 5 %
# is less than one call, and orders finishing leave batches part-empty.
SWEEP_FROM = 2_000
# Seconds of calm before the first fault, the sweep measured: a whole sweep.
CALM = POLL_INTERVAL
# Seconds of calm kept after each fault has settled, before the next one: the stretch where
# the sweep after that fault is measured. Without it the next fault began about 3 s after
# the calm did, and a stretch that short could hold no status call of a provider at all.
CALM_AFTER_FAULT = 10.0
# Main orders finish, batch after batch, from this many seconds after they were seeded to
# this much later, so that orders change state during every fault. One batch in
# SLOW_EVERY spends a while In progress, so those orders show several steps.
FIRST_FINISH_S = 50.0
FINISH_SPAN_S = 190.0
FINISH_BATCHES = 22
SLOW_EVERY = 11
SLOW_PROGRESS_S = 45.0
DROPS_PER_STEP = 3
DROP_AMOUNT = 25
MAIN_SERVICES = (SERVICE_FOLLOWERS_REFILL_CANCEL, SERVICE_VIEWS_REFILL, SERVICE_LIKES_PLAIN)
REFILL_SERVICES = (SERVICE_FOLLOWERS_REFILL_CANCEL, SERVICE_VIEWS_REFILL)
SIM_KEY = "sk-multihost-" + "5e1f0a2b9c8d7e6f"


def _multihost_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("TRACKER_REQUIRE_MULTIHOST") == "1"


def _missing() -> str | None:
    for reason in (netns.missing_tools(), postgres_server.missing()):
        if reason is not None:
            return reason
    for tool in ("redis-server", "redis-sentinel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if skewed_clock.faketime_available() is None:
        return "faketime is not installed"
    return None


def skewed(command: list[str], env: dict[str, str], offset: int) -> tuple[list[str], dict[str, str]]:
    """``command`` and its environment on a host whose wall clock is ``offset`` seconds
    off (Debian's faketime: tests/support/skewed_clock.py); unchanged for a right clock."""
    if not offset:
        return command, env
    return skewed_clock.skewed(command, offset), skewed_clock.skewed_env(env)


def clock_offset(host: Host, env: dict[str, str], offset: int) -> float:
    """How far the host's Python processes find their wall clock off, measured."""
    command, skewed_env = skewed([sys.executable, "-c", "import time; print(time.time())"], env, offset)
    before = time.time()
    done = subprocess.run(host.command(command), env=skewed_env, capture_output=True, text=True, timeout=30, check=True)
    return float(done.stdout) - (before + time.time()) / 2


def say(run_started: float, text: str) -> None:
    print(f"[multihost {time.monotonic() - run_started:6.1f}s] {text}", flush=True)


def polls_running(worker: Proc) -> int:
    """Poll tasks the worker has received and not finished, by its log."""
    lines = [line for line in worker.output().splitlines() if "Task tracker.poll_status_batch[" in line]
    received = sum(1 for line in lines if "] received" in line)
    return received - sum(1 for line in lines if any(end in line for end in ("] succeeded", "] raised", "] retry")))


# --- what the run records ------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    start: float
    # When the fault itself ended (the host let back, the worker restarted, a new master
    # named, the server up again).
    ended: float = 0.0
    # When the run saw every order on schedule again and went on (the end of the window).
    calm_from: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    # Over the calm stretch before the faults: CPU seconds of the worker hosts and of
    # PostgreSQL, the orders polled and the seconds it lasted (the sizing rule).
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    started: float
    sims: dict[str, SimProcess]
    ids: dict[str, list[int]]
    dropped: dict[str, list[int]]
    database_url: str
    # "provider/order" -> the step whose drop it was; those a worker never got, sent again.
    drop_steps: dict[str, str] = field(default_factory=dict)
    resent_drops: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    sim_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    recoveries: list[float | None] = field(default_factory=list)
    # How long an order may go unpolled in normal running: the recovery threshold.
    normal_staleness: float = STALE_AFTER
    sweeps: list[SweepFigure] = field(default_factory=list)
    truth: dict[str, dict[int, dict[str, Any] | None]] = field(default_factory=dict)
    accepted_events: list[str] = field(default_factory=list)
    # The sweep is measured from the end of the first sweep to the moment the sims let
    # every remaining order finish, outside the fault windows.
    first_sweep_done: float = 0.0
    sweep_until: float = 0.0
    refills_unfinished: int = -1
    phases: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    # Over the calm stretch before the faults: CPU seconds of the worker hosts and of
    # PostgreSQL, the orders polled and the seconds it lasted (the sizing rule).
    cpu: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    table: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def require(self, *phases: str) -> None:
        missing = [f"{phase}: {self.errors[phase]}" for phase in phases if phase in self.errors]
        if missing:
            pytest.fail("the scenario did not get there: " + "; ".join(missing))

    def mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.started, 1)
        say(self.started, phase)


# --- the scenario --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    reason = _missing()
    if reason is not None:
        if _multihost_required():
            pytest.fail(f"{reason} (the multi-host test is required in CI)")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("multihost")
    with ExitStack() as stack, pytest.MonkeyPatch.context() as monkeypatch:
        yield _run_scenario(stack, monkeypatch, workdir)


def _settings(database_url: str, broker_url: str, webhook_url: str) -> dict[str, str]:
    return {
        "TRACKER_DATABASE_URL": database_url,
        "TRACKER_BROKER_URL": broker_url,
        "TRACKER_SENTINEL_MASTER": MASTER_NAME,
        "TRACKER_SECRET_KEY": Fernet.generate_key().decode(),
        "TRACKER_MODE": "production",
        # The sims listen on the bridge, not on loopback.
        "TRACKER_ALLOW_HTTP_PROVIDERS": "1",
        "TRACKER_POLL_INTERVAL": str(POLL_INTERVAL),
        # Polled every 30 s however long an order stays unchanged: a steady sweep.
        "TRACKER_MAX_POLL_BACKOFF": "1",
        "TRACKER_TICK_INTERVAL": str(TICK),
        "TRACKER_LEASE_SECONDS": str(LEASE),
        "TRACKER_WORKER_CONCURRENCY": str(WORKER_CHILDREN),
        "TRACKER_HTTP_CONNECT_TIMEOUT": "2",
        "TRACKER_HTTP_READ_TIMEOUT": "5",
        "TRACKER_REFILL_RETRY_BASE": "1",
        "TRACKER_REFILL_RETRY_CAP": "2",
        "TRACKER_WEBHOOK_URL": webhook_url,
        "TRACKER_WEBHOOK_SECRET": secrets.token_hex(16),
        "TRACKER_WEBHOOK_TIMEOUT": "3",
    }


def _run_scenario(stack: ExitStack, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Run:
    started = time.monotonic()
    logs = workdir / "logs"
    network = stack.enter_context(PrivateNetwork(len(CLOCKS)))
    hosts = {host.name: host for host in network.hosts}
    address = network.gateway
    postgres = stack.enter_context(PostgresServer(address, free_port()))
    database_url = postgres.create_database("tracker")
    redis_group = stack.enter_context(
        SentinelGroup(workdir / "redis", host=address, down_after_ms=1000, failover_timeout_ms=5000)
    )
    endpoint = stack.enter_context(ShopEndpoint(host=address))
    env = {**os.environ, **_settings(database_url, redis_group.url(), endpoint.url), "TRACKER_SIM_KEY": SIM_KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from tracker.config import reset_settings
    from tracker.db.session import dispose_engines

    reset_settings()
    stack.callback(dispose_engines)
    stack.callback(reset_settings)
    migrate.upgrade(database_url)

    sims: dict[str, SimProcess] = {}
    for seed, (name, (dialect, rate)) in enumerate(PROVIDERS.items(), start=11):
        sims[name] = SimProcess.start(
            name, host=address, dialect=dialect, seed=seed, rate_limit=rate, env=env, log_dir=logs
        )
        stack.callback(sims[name].proc.stop)
        sims[name].admin.set_config(refill_pending_s=5.0, refill_progress_s=10.0)
        assert tracker_cli(
            ["provider", "add", name, "--url", sims[name].url, "--key-env", "TRACKER_SIM_KEY", "--rate-limit", f"{rate:g}"]
        ) == 0
        assert tracker_cli(["provider", "sync", name]) == 0

    # --- the hosts ---------------------------------------------------------------------------
    workers: dict[str, Proc] = {}

    def start_worker(host: Host) -> Proc:
        command, host_env = skewed(processes.celery(
            "worker", "--loglevel", "INFO", "--hostname", f"{host.name}@multihost", "--without-gossip", "--without-mingle",
        ), {**env, "TRACKER_STATE_DIR": str(workdir / "state" / host.name)}, CLOCKS[host.name])
        proc = processes.start(f"worker-{host.name}", host.command(command), host_env, logs, die_with_test=True)
        stack.callback(proc.stop)
        workers[host.name] = proc
        return proc

    for host in hosts.values():
        offset = clock_offset(host, env, CLOCKS[host.name])
        assert abs(offset - CLOCKS[host.name]) < 5, f"{host.name}'s clock is {offset:+.1f} s off, not {CLOCKS[host.name]:+d} s"
        start_worker(host)
    beat_command, beat_env = skewed(
        processes.celery("beat", "--loglevel", "INFO", "--schedule", str(workdir / "beat-schedule")),
        {**env, "TRACKER_STATE_DIR": str(workdir / "state" / "beat")}, CLOCKS[BEAT_HOST],
    )
    beat = processes.start("beat", hosts[BEAT_HOST].command(beat_command), beat_env, logs, die_with_test=True)
    stack.callback(beat.stop)
    for proc in workers.values():
        proc.wait_for_output(" ready.", timeout=90)
    beat.wait_for_output("beat: Starting", timeout=60)

    shop = Celery("shop", broker=redis_group.url())
    shop.conf.broker_transport_options = {"master_name": MASTER_NAME}
    stack.callback(shop.close)

    # --- the orders ------------------------------------------------------------------------------
    # provider -> (service, order IDs) as seeded, handed over in the same groups
    seeded: dict[str, list[tuple[int, list[int]]]] = {name: [] for name in sims}
    early: dict[str, list[int]] = {}
    per_batch = (ORDERS_PER_PROVIDER - EARLY_ORDERS) // FINISH_BATCHES
    for name, sim in sims.items():
        for service in REFILL_SERVICES:
            group = sim.admin.seed_orders(
                count=EARLY_ORDERS // len(REFILL_SERVICES), service=service, pending_s=2.0, progress_s=4.0
            )
            seeded[name].append((service, group))
        early[name] = [order_id for _, group in seeded[name] for order_id in group]
        for batch in range(FINISH_BATCHES):
            count = per_batch if batch < FINISH_BATCHES - 1 else ORDERS_PER_PROVIDER - EARLY_ORDERS - per_batch * batch
            service = MAIN_SERVICES[batch % len(MAIN_SERVICES)]
            progress = SLOW_PROGRESS_S if batch % SLOW_EVERY == 0 else 1.0
            finish = FIRST_FINISH_S + batch * FINISH_SPAN_S / FINISH_BATCHES
            seeded[name].append(
                (service, sim.admin.seed_orders(count=count, service=service, pending_s=finish - progress, progress_s=progress))
            )
    ids = {name: [order_id for _, group in groups for order_id in group] for name, groups in seeded.items()}
    registered = datetime.now(UTC).replace(tzinfo=None)
    seeded_at = time.monotonic()
    for name, groups in seeded.items():
        for service, group in groups:
            for start in range(0, len(group), 1000):
                shop.send_task("tracker.track_orders", args=[name, group[start : start + 1000]], kwargs={"service": service})
    say(started, f"{sum(map(len, ids.values()))} orders seeded and handed to the tracker")

    run = Run(started, sims, ids, {name: [] for name in sims}, database_url)
    sampler = stack.enter_context(Sampler(database_url, sims, registered))
    # Written however the run ends (a timeout included), for reading afterwards.
    stack.callback(lambda: _write_timeline(run, sampler.samples, workdir / "timeline.tsv"))
    total = ORDERS_PER_PROVIDER * len(sims)

    def attempt(phase: str, step: Callable[[], None]) -> bool:
        try:
            step()
            return True
        except (TimeoutError, AssertionError, RuntimeError) as exc:
            run.errors[phase] = str(exc) or type(exc).__name__
            say(started, f"{phase} did not complete: {run.errors[phase]}")
            return False

    def polled_orders() -> int:
        with psycopg.connect(database_url, autocommit=True) as connection:
            row = connection.execute("SELECT count(*) FROM orders WHERE status IS NOT NULL").fetchone()
        return int(row[0]) if row else 0

    def drop_some(step: str) -> None:
        """A few early orders the tracker has seen completed drop in the sims, and the shop
        reports them: their refills are requested during the fault that follows."""
        with psycopg.connect(database_url, autocommit=True) as connection:
            for name, sim in sims.items():
                candidates = [
                    external_id
                    for (external_id,) in connection.execute(
                        "SELECT o.external_id FROM orders o JOIN providers p ON p.id = o.provider_id "
                        "WHERE p.name = %s AND o.status = 'Completed' AND o.external_id = ANY(%s) ORDER BY o.external_id",
                        (name, early[name]),
                    )
                    if external_id not in run.dropped[name]
                ][:DROPS_PER_STEP]
                for order_id in candidates:
                    sim.admin.drop(order_id, DROP_AMOUNT)
                    run.dropped[name].append(order_id)
                    run.drop_steps[f"{name}/{order_id}"] = step
                    shop.send_task("tracker.report_drop", args=[name, order_id])

    def confirm_drops() -> None:
        """As a careful shop does (operations.md): drop reports the tracker has not recorded
        by now are sent again. A message the broker handed to a worker whose link then went
        down is gone: Redis has already removed it from the queue."""
        with psycopg.connect(database_url, autocommit=True) as connection:
            recorded = {
                f"{name}/{external_id}"
                for name, external_id in connection.execute(
                    "SELECT p.name, o.external_id FROM drops d JOIN orders o ON o.id = d.order_id "
                    "JOIN providers p ON p.id = o.provider_id"
                )
            }
        for key, step in run.drop_steps.items():
            if key not in recorded:
                name, order_id = key.split("/")
                run.resent_drops.append(f"{key} (sent during the {step})")
                shop.send_task("tracker.report_drop", args=[name, int(order_id)])

    def cpu_now() -> dict[str, float]:
        """CPU seconds used so far by every process of the worker hosts (workers, their
        pool children, beat) and by the PostgreSQL server."""
        return {
            "workers": cpu_seconds(pid for host in hosts.values() for pid in host.pids()),
            "postgres": cpu_seconds(children_of(postgres.postmaster_pid())),
        }

    def stale_now() -> float:
        sample = sampler.latest()
        return max(p.staleness for p in sample.providers.values()) if sample else math.inf

    def settle(fault: Fault) -> None:
        """Until every active order has been polled since the fault ended, and every one
        within STALE_AFTER seconds for a few samples in a row: what the fault held up has
        been caught up with, so the next fault starts from a calm run."""
        calm_since: list[float] = []

        def calm() -> bool:
            now = time.monotonic()
            stale = stale_now()
            if stale > STALE_AFTER or stale >= now - fault.ended:
                calm_since.clear()
            elif not calm_since:
                calm_since.append(now)
            return bool(calm_since) and now - calm_since[0] >= 3.0

        try:
            wait_until(calm, timeout=STALE_AFTER + 90, interval=0.5, what=f"every order polled on schedule after {fault.name}")
        finally:
            fault.calm_from = time.monotonic()

    # --- warm-up: every order registered and polled once ---------------------------------------
    if attempt("warm-up", lambda: wait_until(lambda: polled_orders() == total, timeout=120, interval=1.0,
                                              what="every order polled once")):
        run.mark("first sweep done")
        run.first_sweep_done = time.monotonic()
        drop_some("warm-up")
        cpu_before = cpu_now()
        sample_before = sampler.latest()
        time.sleep(CALM)  # on purpose: a stretch of the sweep measured before any fault
        run.cpu = {name: cpu_now()[name] - used for name, used in cpu_before.items()}
        sample_after = sampler.latest()
        if sample_before is not None and sample_after is not None:
            run.cpu["orders polled"] = sum(
                sample_after.providers[name].status_ids - sample_before.providers[name].status_ids for name in sims
            )
            run.cpu["seconds"] = sample_after.at - sample_before.at
            run.cpu["events delivered"] = (sample_after.outbox_total - sample_after.outbox_backlog) - (
                sample_before.outbox_total - sample_before.outbox_backlog
            )

    def fault(phase: str, name: str, act: Callable[[Fault], None]) -> None:
        """One fault: ``act`` does it (and reports the drops meant to meet it); when it
        returns, the fault has ended, and the run waits until it has settled."""

        def step() -> None:
            happening = Fault(name, time.monotonic())
            run.faults.append(happening)
            act(happening)
            happening.ended = time.monotonic()
            settle(happening)
            time.sleep(CALM_AFTER_FAULT)  # on purpose: the sweep after the fault, measured

        if attempt(phase, step):
            run.mark(f"{name}: settled")

    # --- 1: kill -9, and the supervisor's restart ---------------------------------------------
    def kill_worker(happening: Fault) -> None:
        host, proc = hosts[KILLED_HOST], workers[KILLED_HOST]
        happening.notes["poll tasks it was running"] = polls_running(proc)
        happening.notes["processes killed"] = len(host.kill_all())
        proc.process.wait()
        drop_some("kill")
        time.sleep(RESTART_AFTER)  # on purpose: a supervisor's restart delay
        start_worker(host).wait_for_output(" ready.", timeout=90)

    # Mid-sweep: while the host is running poll tasks.
    if attempt("kill", lambda: wait_until(
        lambda: polls_running(workers[KILLED_HOST]) > 0, timeout=60, interval=0.1, what=f"{KILLED_HOST} polling"
    )):
        fault("kill", "kill -9 of a worker", kill_worker)

    # --- 2: a host cut off from Redis and PostgreSQL --------------------------------------------
    def cut_off(happening: Fault) -> None:
        host = hosts[CUT_HOST]
        host.cut_off(address, [postgres.port, *redis_group.servers, *redis_group.sentinel_ports])
        try:
            drop_some("cut")
            time.sleep(CUT_SECONDS)  # on purpose: the cut's length
        finally:
            host.let_back()

    fault("cut", "host cut off for 30 s", cut_off)

    # --- 3: Redis fails over --------------------------------------------------------------------
    def fail_over(happening: Fault) -> None:
        old = redis_group.master_port()
        redis_group.kill(old)
        redis_group.wait_for_new_master(old, timeout=30)
        happening.notes["promoted after"] = round(time.monotonic() - happening.start, 1)
        drop_some("failover")

    fault("failover", "Redis failover", fail_over)

    # --- 4: PostgreSQL restarts -----------------------------------------------------------------
    def restart_postgres(happening: Fault) -> None:
        postgres.restart()
        happening.notes["restart took"] = round(time.monotonic() - happening.start, 1)
        drop_some("restart")

    fault("restart", "PostgreSQL restart", restart_postgres)

    # --- the end: every order finishes, every refill and webhook too -------------------------------
    run.sweep_until = time.monotonic()
    confirm_drops()
    left = FIRST_FINISH_S + FINISH_SPAN_S - (time.monotonic() - seeded_at)
    if left > 0:
        # The faults took less time than the orders: the rest finish now.
        for sim in sims.values():
            sim.admin.advance(left)
    run.mark(f"every order due to finish (sim clocks moved on {max(0.0, left):.0f} s)")

    def all_final() -> bool:
        with psycopg.connect(database_url, autocommit=True) as connection:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM orders WHERE NOT final), "
                "(SELECT count(*) FROM refill_requests WHERE NOT final), (SELECT count(*) FROM refills WHERE NOT final), "
                "(SELECT count(*) FROM drops)"
            ).fetchone()
        assert row is not None
        active, requests, refills, drops = (int(value) for value in row)
        run.refills_unfinished = requests + refills
        run.notes["still active, refill requests, refills, drops"] = (active, requests, refills, drops)
        return active == 0 and requests == 0 and refills == 0 and drops == sum(map(len, run.dropped.values()))

    if attempt("all final", lambda: wait_until(all_final, timeout=120, interval=1.0, what="every order and refill final")):
        run.mark("all final")
    else:
        say(started, f"left unfinished: {run.notes}")
    def all_delivered() -> bool:
        sample = sampler.latest()
        return sample is not None and sample.outbox_backlog == 0

    if attempt("all delivered", lambda: wait_until(all_delivered, timeout=120, interval=1.0, what="every event delivered")):
        run.mark("all delivered")
    sampler.__exit__()
    for proc in [*workers.values(), beat]:
        proc.stop()
    run.samples = list(sampler.samples)
    run.accepted_events = endpoint.accepted_ids()
    for name, sim in sims.items():
        run.sim_stats[name] = sim.admin.stats()
        run.truth[name] = sim.admin.truth(ids[name])
    run.mark("done")
    _tabulate(run)
    return run


def _write_timeline(run: Run, samples: list[Sample], path: Path) -> None:
    """Every sample, and when each fault began and ended, for reading after a failure."""
    with path.open("w") as out:
        for fault in run.faults:
            out.write(f"# {fault.name}: start {fault.start - run.started:.1f} ended {fault.ended - run.started:.1f} "
                      f"calm {fault.calm_from - run.started:.1f} {fault.notes}\n")
        for window in run.windows:
            out.write(f"# window {window.name}: {window.start - run.started:.1f} - {window.end - run.started:.1f}\n")
        names = list(run.sims)
        out.write("t\t" + "\t".join(f"{n}:active\t{n}:stale\t{n}:calls\t{n}:ids\t{n}:1s" for n in names) + "\tbacklog\tevents\n")
        for sample in samples:
            cells = [f"{sample.at - run.started:.1f}"]
            for name in names:
                p = sample.providers[name]
                cells += [str(p.active), f"{p.staleness:.1f}", str(p.status_calls), str(p.status_ids), str(p.busiest_second)]
            out.write("\t".join([*cells, str(sample.outbox_backlog), str(sample.outbox_total)]) + "\n")


# --- the table -------------------------------------------------------------------------------------


def _windows(run: Run) -> None:
    """The fault windows (each fault's start to its recovery, as the samples show it) and
    the stretches between them, where the sweep is measured."""
    run.recoveries = []
    ends = [fault.start for fault in run.faults[1:]] + [run.sweep_until]
    first_end = run.faults[0].start if run.faults else run.sweep_until
    if run.first_sweep_done:
        run.windows.append(Window("before the faults", run.first_sweep_done, first_end))
    # Back to normal: every order polled within STALE_AFTER again, or within what the
    # calm sweep before the faults already took (a loaded machine's normal).
    run.normal_staleness = max(STALE_AFTER, peak_staleness(run.samples, run.first_sweep_done, first_end) + 2.0)
    for fault, until in zip(run.faults, ends, strict=True):
        took = recovery(run.samples, fault.start, until, run.normal_staleness)
        run.recoveries.append(took)
        if took is not None and fault.start + took < until:
            run.windows.append(Window(f"after the {fault.name}", fault.start + took, until))


def _tabulate(run: Run) -> None:
    _windows(run)
    rows: list[tuple[str, str, str, bool]] = []
    problems = {name: order_problems(run.database_url, name, run.truth[name]) for name in run.sims}
    lost = sum(len(found) for found in problems.values())
    rows.append(("orders lost or stuck (not at their true final status)", "0", str(lost), lost == 0))
    duplicates = outbox_problems(run.database_url)
    rows.append(("orders or refills whose outbox events differ from their history", "0", str(len(duplicates)), not duplicates))
    twice = 0
    for name in run.sims:
        refill_ids = int(run.sim_stats[name]["actions"].get("refill", {}).get("ids_total", 0))
        per_order = [len((run.truth[name].get(order_id) or {}).get("refills", [])) for order_id in run.dropped[name]]
        twice += max(0, refill_ids - len(run.dropped[name])) + sum(1 for count in per_order if count > 1)
    dropped = sum(map(len, run.dropped.values()))
    rows.append((f"refills sent twice ({dropped} drops reported)", "0", str(twice), twice == 0))
    rows.append(("drop reports lost by the broker, sent again by the shop", "shown",
                 f"{len(run.resent_drops)}" + (f": {', '.join(run.resent_drops)}" if run.resent_drops else ""), True))
    undelivered, events, repeats = delivery_problems(run.database_url, run.accepted_events)
    rows.append((f"webhooks not delivered or out of order ({events} events, {repeats} repeats)", "0",
                 str(len(undelivered)), not undelivered))
    measured = [figure for window in run.windows for name in run.sims
                if (figure := calls_per_sweep(run.samples, window, name)) is not None]
    sweeps = [figure for figure in measured if figure.mean_active >= SWEEP_FROM]
    run.sweeps = sweeps
    worst = max(sweeps, key=lambda figure: figure.calls_per_sweep / figure.bound, default=None)
    rows.append((
        f"status calls per full sweep, outside fault windows, N >= {SWEEP_FROM} (worst window)",
        "<= 1.05 x ceil(N/100)",
        f"{worst.calls_per_sweep:.1f} at N={worst.mean_active:.0f} ({worst.provider}, {worst.window})" if worst else "none measured",
        bool(sweeps) and all(figure.within for figure in sweeps),
    ))
    for name, sim in run.sims.items():
        seen = int(run.sim_stats[name]["all"]["max_calls_in_any_1s_window"])
        rows.append((f"most calls in any 1 s at {name}, faults included", f"<= {sim.rate_limit:g}", str(seen), seen <= sim.rate_limit))
    ends = [fault.start for fault in run.faults[1:]] + [run.sweep_until]
    for fault, took, until in zip(run.faults, run.recoveries, ends, strict=True):
        peak = peak_staleness(run.samples, fault.start, until)
        rows.append((f"recovery after {fault.name}: every order polled within {run.normal_staleness:.0f} s again",
                     "measured", ("not recovered" if took is None else f"{took:.0f} s") + f" (longest unpolled {peak:.0f} s)",
                     took is not None))
    smaller = [figure for figure in measured if figure.mean_active < SWEEP_FROM]
    if smaller:
        least = max(smaller, key=lambda figure: figure.calls_per_sweep / figure.bound)
        rows.append((f"the same below N = {SWEEP_FROM} (orders finishing thin the batches)", "shown",
                     f"{least.calls_per_sweep:.1f} at N={least.mean_active:.0f} (bound {least.bound:.1f})", True))
    polled, seconds = run.cpu.get("orders polled", 0.0), run.cpu.get("seconds", 0.0)
    if polled and seconds and run.cpu.get("workers") and run.cpu.get("postgres"):
        rows.append(("sizing, calm sweep before the faults: orders polled / webhooks delivered per second", "measured",
                     f"{polled / seconds:.0f} / {run.cpu.get('events delivered', 0.0) / seconds:.0f}", True))
        rows.append(("sizing: orders polled per worker CPU-second (those webhooks included)", "measured",
                     f"{polled / run.cpu['workers']:.0f}", True))
        rows.append(("sizing: PostgreSQL CPU-seconds per 10,000 orders polled", "measured",
                     f"{10_000 * run.cpu['postgres'] / polled:.2f}", True))
    rows.append(("longest an order went unpolled outside fault windows", "shown",
                 f"{longest_unpolled(run.samples, run.windows):.0f} s", True))
    run.table = rows
    lines = ["| check | required | measured | |", "|---|---|---|---|"]
    lines += [f"| {check} | {required} | {measured} | {'ok' if ok else 'FAILED'} |" for check, required, measured, ok in rows]
    text = "\n".join(lines)
    print(f"\n[multihost] {len(run.sims)} providers, {sum(map(len, run.ids.values()))} orders, 3 hosts\n{text}", flush=True)
    print_figures("multihost phases (s from start)", run.phases)
    figures_file = os.environ.get("TRACKER_FIGURES_FILE")
    if figures_file:
        with open(figures_file, "a") as handle:
            handle.write(f"multihost result table:\n{text}\n")
    run.problems = problems  # type: ignore[attr-defined]
    run.outbox = duplicates  # type: ignore[attr-defined]
    run.undelivered = undelivered  # type: ignore[attr-defined]


def _row(run: Run, prefix: str) -> tuple[str, str, str, bool]:
    return next(row for row in run.table if row[0].startswith(prefix))


# --- the checks -------------------------------------------------------------------------------------


def test_every_fault_was_run(run: Run) -> None:
    run.require("warm-up", "kill", "cut", "failover", "restart")
    assert [fault.name for fault in run.faults] == [
        "kill -9 of a worker", "host cut off for 30 s", "Redis failover", "PostgreSQL restart"
    ]


def test_every_order_reaches_its_true_final_status(run: Run) -> None:
    run.require("all final")
    problems: dict[str, dict[int, list[str]]] = run.problems  # type: ignore[attr-defined]
    shown = {name: dict(list(found.items())[:3]) for name, found in problems.items() if found}
    assert not shown, f"orders lost or stuck: {shown}"


def test_no_history_row_or_outbox_event_twice(run: Run) -> None:
    run.require("all final")
    duplicates: dict[str, list[str]] = run.outbox  # type: ignore[attr-defined]
    assert not duplicates, dict(list(duplicates.items())[:5])


def test_no_refill_sent_twice(run: Run) -> None:
    run.require("all final")
    check, _, measured, ok = _row(run, "refills sent twice")
    assert sum(map(len, run.dropped.values())) >= 5 * DROPS_PER_STEP, "too few drops were reported to mean much"
    assert ok, f"{check}: {measured}"


def test_every_webhook_delivered_in_order(run: Run) -> None:
    run.require("all delivered")
    undelivered: dict[str, list[str]] = run.undelivered  # type: ignore[attr-defined]
    assert not undelivered, dict(list(undelivered.items())[:5])


def test_status_calls_per_sweep_outside_fault_windows(run: Run) -> None:
    sweeps = run.sweeps
    for name in run.sims:
        stretches = [(window.name, round(window.end - window.start, 1)) for window in run.windows]
        assert sum(1 for figure in sweeps if figure.provider == name) >= 2, f"{name}: too few stretches measured in {stretches}"
    over = [figure for figure in sweeps if not figure.within]
    assert not over, over


def test_never_over_a_rate_limit_at_the_sims(run: Run) -> None:
    over = {
        name: int(run.sim_stats[name]["all"]["max_calls_in_any_1s_window"])
        for name, sim in run.sims.items()
        if int(run.sim_stats[name]["all"]["max_calls_in_any_1s_window"]) > sim.rate_limit
    }
    assert not over, over


def test_every_fault_recovered(run: Run) -> None:
    rows = [row for row in run.table if row[0].startswith("recovery after")]
    assert len(rows) == 4
    assert all(ok for *_, ok in rows), rows
