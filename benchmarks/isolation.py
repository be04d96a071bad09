"""Isolation benchmark: does a slow provider slow down a fast one, or a shop's task?

Two providers, each on its own `tracker sim` process, one worker started with the
default command (`celery -A tracker worker --loglevel WARNING --hostname ...
--without-gossip --without-mingle`, no pool flags, TRACKER_WORKER_CONCURRENCY unset),
beat, Redis and a database on this machine. It prints figures and asserts nothing.

- fast: answers in 200 ms; 20,000 orders at a rate limit of 20 requests/s, so its sweep
  (200 calls) is bound by the rate limit, about 10 s;
- slow: its own 5,000 orders; every answer takes 25 s. `--slow-mode latency` (default):
  the sim waits 25 s before it answers anything; `--slow-mode trickle`: it answers at
  once but sends the body a byte at a time, spread over 25 s (each read is quick, the
  whole answer is slow).

Two runs, each on a fresh database, broker and sims:
1. the fast provider alone: its sweep time, first call to last write;
2. the same with the slow provider's orders due at the same moment: the fast sweep's time
   again, and its ratio to the first (the target is at most 1.1).

In both runs, once the fast provider's sweep is under way (--shop-after seconds after
its first call), the shop's task `tracker.track_orders` is sent exactly as a shop would
send it (a plain Celery client's `send_task` on the default `celery` queue), for new
orders of the fast provider, and the time until the task starts is measured from the
worker's own `task-started` event (Celery events, read with `app.events.Receiver`), and,
as an upper bound that needs no events, the time until its orders are in the database.

    python benchmarks/isolation.py                       # PostgreSQL, slow provider waits 25 s
    python benchmarks/isolation.py --slow-mode trickle   # slow provider trickles its body over 25 s
    python benchmarks/isolation.py --db sqlite --fast-orders 5000
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from celery import Celery
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Sampler, tree  # noqa: E402
from sweep import API_KEY, Figures, benchmark_settings, broker, database, sim_process, start, worker_env  # noqa: E402
from tracker.config import reset_settings  # noqa: E402
from tracker.db import migrate  # noqa: E402
from tracker.db.models import Order, Provider  # noqa: E402
from tracker.db.session import dispose_engines, unit_of_work  # noqa: E402
from tracker.sim.admin import SimAdmin  # noqa: E402

WORKER_COMMAND = [sys.executable, "-m", "celery", "-A", "tracker", "worker", "--loglevel", "WARNING",
                  "--hostname", "isolation@%h", "--without-gossip", "--without-mingle"]


def register(database_url: str, name: str, sim_url: str, ids: list[int], rate_limit: float) -> None:
    from tracker.core.clock import utcnow
    from tracker.config import get_settings
    from tracker.orders.enqueue import track_orders
    from tracker.providers.registry import ProviderSpec, upsert_provider

    with unit_of_work(database_url) as session:
        upsert_provider(session, ProviderSpec(name, sim_url, API_KEY, rate_limit=rate_limit), get_settings(), utcnow())
    for offset in range(0, len(ids), 20_000):
        with unit_of_work(database_url) as session:
            track_orders(session, name, ids[offset : offset + 20_000], now=utcnow())


def provider_id(database_url: str, name: str) -> int:
    with unit_of_work(database_url) as session:
        found = session.scalar(select(Provider.id).where(Provider.name == name))
        assert found is not None
        return int(found)


def persisted(database_url: str, provider: int, first: int, last: int) -> int:
    """Orders of ``provider`` with external IDs in [first, last] that have been polled."""
    with unit_of_work(database_url) as session:
        return int(session.scalar(
            select(func.count()).select_from(Order).where(
                Order.provider_id == provider, Order.external_id.between(first, last),
                Order.last_observed_at.is_not(None),
            )
        ) or 0)


def tracked(database_url: str, provider: int, first: int, last: int) -> int:
    with unit_of_work(database_url) as session:
        return int(session.scalar(
            select(func.count()).select_from(Order).where(
                Order.provider_id == provider, Order.external_id.between(first, last))
        ) or 0)


def span(database_url: str, provider: int, first: int, last: int) -> tuple[float, float]:
    """First call and last write of these orders' first poll, on the time.time() clock."""
    with unit_of_work(database_url) as session:
        first_call, last_write = session.execute(
            select(func.min(Order.last_observed_at), func.max(Order.updated_at)).where(
                Order.provider_id == provider, Order.external_id.between(first, last))
        ).one()
    assert first_call is not None and last_write is not None
    return float(first_call.timestamp()), float(last_write.timestamp())


def status_answered(sim: SimAdmin) -> tuple[int, int]:
    """(calls, IDs) the sim has received for status."""
    status = sim.stats()["actions"].get("status")
    return (int(status["calls"]), int(status["ids_total"])) if status else (0, 0)


class TaskEvents:
    """The worker's events for the tasks we sent, as a monitor (Flower) sees them: the
    first time each event type arrived for each task id, on the event's own clock (the
    worker's time.time(), the same machine as ours)."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self.seen: dict[str, dict[str, float]] = {}
        self._receiver: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self.error: str | None = None

    def _on_event(self, event: dict[str, Any]) -> None:
        task_id = event.get("uuid")
        if task_id:
            self.seen.setdefault(str(task_id), {}).setdefault(str(event["type"]), float(event["timestamp"]))

    def _run(self) -> None:
        try:
            with self._app.connection_for_read() as connection:
                self._receiver = self._app.events.Receiver(connection, handlers={"*": self._on_event})
                self._ready.set()
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # reported with the figures, not fatal
            self.error = repr(exc)
            self._ready.set()

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        self._ready.wait(10)
        # The receiver's queue is bound once it consumes; give it a moment.
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)


@dataclass
class Run:
    sweep: float | None
    persisted: int
    calls: int
    max_calls_in_1s: int
    startup: float
    task_started_after: float | None
    task_received_after: float | None
    rows_after: float | None
    slow_calls: int = 0
    slow_persisted: int = 0
    slow_failures: int = 0
    worker_processes: int = 0
    events_error: str | None = None


def stop(processes: list[Any]) -> None:
    """Warm shutdown, then cold, then SIGKILL for what is left of each process tree (all
    ours: the worker, its pool children, beat)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            pass
    for process in processes:
        if process.poll() is None:
            members = tree(process.pid)
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=10)
            except Exception:
                for pid in reversed(members):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                process.wait(timeout=10)


@contextmanager
def slow_sim(args: argparse.Namespace, logs: Path) -> Iterator[SimAdmin]:
    latency = args.slow_seconds * 1000 if args.slow_mode == "latency" else 0.0
    (logs / "slow").mkdir(exist_ok=True)
    with sim_process(latency, logs / "slow") as (sim, _pid):
        yield sim


def trickle_seconds_per_byte(sim: SimAdmin, ids: list[int], seconds: float) -> tuple[float, int]:
    """Per-byte delay that spreads a 100-ID status answer over ``seconds``."""
    response = requests.post(sim.url, data={"key": API_KEY, "action": "status",
                                            "orders": ",".join(map(str, ids[:100]))}, timeout=30)
    response.raise_for_status()
    size = len(response.content)
    return seconds / size, size


def one_run(with_slow: bool, args: argparse.Namespace, work: Path) -> Run:
    logs = (Path(args.log_dir) if args.log_dir else work) / ("with-slow" if with_slow else "alone")
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        database_url = stack.enter_context(database(args.db, logs))
        broker_url = stack.enter_context(broker(logs))
        (logs / "fast").mkdir(exist_ok=True)
        fast, _ = stack.enter_context(sim_process(args.fast_latency_ms, logs / "fast"))
        migrate.upgrade(database_url)
        env = worker_env({**os.environ, **benchmark_settings(database_url, broker_url, logs / "state")})
        os.environ.update({key: env[key] for key in ("TRACKER_DATABASE_URL", "TRACKER_SECRET_KEY", "TRACKER_MODE",
                                                     "TRACKER_STATE_DIR", "TRACKER_BROKER_URL")})
        reset_settings()
        fast_ids = fast.seed_orders(count=args.fast_orders, service=1, pending_s=10**8)
        slow: SimAdmin | None = None
        slow_ids: list[int] = []
        if with_slow:
            slow = stack.enter_context(slow_sim(args, logs))
            slow_ids = slow.seed_orders(count=args.slow_orders, service=1, pending_s=10**8)
            if args.slow_mode == "trickle":
                per_byte, size = trickle_seconds_per_byte(slow, slow_ids, args.slow_seconds)
                print(f"  (trickle: a 100-ID status answer is {size} bytes, one byte every {per_byte * 1000:.2f} ms)")
                slow.inject_fault("trickle", seconds=per_byte)
            # The slow provider first: its orders are claimed at the first tick, with the fast one's.
            register(database_url, "slow", slow.url, slow_ids, args.slow_rate_limit)
            slow.reset_stats()
        register(database_url, "fast", fast.url, fast_ids, args.fast_rate_limit)
        fast_provider = provider_id(database_url, "fast")
        # The shop's new orders, on the fast provider's sim, sent once the sweep is under way.
        shop_ids = fast.seed_orders(count=args.shop_orders, service=1, pending_s=10**8)
        fast.reset_stats()

        shop = Celery("shop", broker=broker_url)
        worker = start("worker", WORKER_COMMAND, env, logs)
        processes: list[Any] = [worker]
        sampler = Sampler(lambda: [worker.pid])
        try:
            stack.enter_context(sampler)
            events = stack.enter_context(TaskEvents(shop))
            time.sleep(3)
            started_wall = time.time()
            beat = start("beat", [sys.executable, "-m", "celery", "-A", "tracker", "beat", "--loglevel", "WARNING",
                                  "--schedule", str(logs / "beat-schedule")], env, logs)
            processes.append(beat)
            deadline = time.monotonic() + args.timeout
            sent_at: float | None = None
            task_id = ""
            rows_after: float | None = None
            first_seen: float | None = None
            finished = False
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker died: see {logs}")
                calls, ids = status_answered(fast)
                now = time.time()
                if first_seen is None and calls > 0:
                    first_seen = now
                if sent_at is None and first_seen is not None and now - first_seen >= args.shop_after:
                    sent_at = time.time()
                    task_id = shop.send_task("tracker.track_orders", args=["fast", shop_ids]).id
                if sent_at is not None and rows_after is None:
                    if tracked(database_url, fast_provider, shop_ids[0], shop_ids[-1]) == len(shop_ids):
                        rows_after = time.time() - sent_at
                if not finished and ids >= args.fast_orders:
                    finished = persisted(database_url, fast_provider, fast_ids[0], fast_ids[-1]) >= args.fast_orders
                if finished and rows_after is not None:
                    break
                time.sleep(0.1)
            done = persisted(database_url, fast_provider, fast_ids[0], fast_ids[-1])
            stats = fast.stats()["actions"].get("status", {})
            seen = events.seen.get(task_id, {})
            run = Run(
                sweep=None, persisted=done, calls=int(stats.get("calls", 0)),
                max_calls_in_1s=int(stats.get("max_calls_in_any_1s_window", 0)),
                startup=(first_seen - started_wall) if first_seen is not None else math.nan,
                task_started_after=(seen["task-started"] - sent_at) if sent_at and "task-started" in seen else None,
                task_received_after=(seen["task-received"] - sent_at) if sent_at and "task-received" in seen else None,
                rows_after=rows_after, events_error=events.error,
            )
            if finished:
                first_call, last_write = span(database_url, fast_provider, fast_ids[0], fast_ids[-1])
                run.sweep = last_write - first_call
            if slow is not None:
                run.slow_calls = status_answered(slow)[0]
                slow_provider = provider_id(database_url, "slow")
                run.slow_persisted = persisted(database_url, slow_provider, slow_ids[0], slow_ids[-1])
                with unit_of_work(database_url) as session:
                    run.slow_failures = int(session.scalar(
                        select(Provider.consecutive_failures).where(Provider.id == slow_provider)) or 0)
            run.worker_processes = sampler.peaks.processes
        finally:
            stop(processes)
            dispose_engines()
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mariadb"], default="postgresql")
    parser.add_argument("--fast-orders", type=int, default=20_000)
    parser.add_argument("--fast-latency-ms", type=float, default=200.0)
    parser.add_argument("--fast-rate-limit", type=float, default=20.0, help="requests/s")
    parser.add_argument("--slow-orders", type=int, default=5_000)
    parser.add_argument("--slow-seconds", type=float, default=25.0, help="how long each slow answer takes")
    parser.add_argument("--slow-mode", choices=["latency", "trickle"], default="latency")
    parser.add_argument("--slow-rate-limit", type=float, default=20.0, help="requests/s")
    parser.add_argument("--shop-orders", type=int, default=100, help="orders in the shop's track_orders task")
    parser.add_argument("--shop-after", type=float, default=3.0,
                        help="seconds after the fast provider's first call to send the shop's task")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each run may take")
    parser.add_argument("--log-dir", help="keep the worker, beat and sim logs here (default: discarded)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().machine}; python {sys.version.split()[0]}")
    print(f"worker command: {' '.join(WORKER_COMMAND[2:])}")
    print(f"fast provider: {args.fast_orders} orders, answers in {args.fast_latency_ms:g} ms, rate limit "
          f"{args.fast_rate_limit:g}/s (ceil(N/100) = {math.ceil(args.fast_orders / 100)} calls, "
          f"{math.ceil(args.fast_orders / 100) / args.fast_rate_limit:.1f} s at the rate limit)")
    print(f"slow provider: {args.slow_orders} orders, every answer takes {args.slow_seconds:g} s ({args.slow_mode}), "
          f"rate limit {args.slow_rate_limit:g}/s")
    print(f"shop: tracker.track_orders for {args.shop_orders} new fast orders, sent {args.shop_after:g} s after "
          f"the fast provider's first call")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="tracker-isolation-") as tmp:
        runs = {}
        for with_slow in (False, True):
            runs[with_slow] = one_run(with_slow, args, Path(tmp))
            show(runs[with_slow], with_slow, args)
    alone, together = runs[False], runs[True]
    figures = Figures()
    if alone.sweep and together.sweep:
        figures["fast sweep with slow / alone (target <= 1.1)"] = round(together.sweep / alone.sweep, 2)
    else:
        figures["fast sweep with slow / alone (target <= 1.1)"] = "not measured: a sweep did not finish"
    figures.show("isolation")
    return 0


def show(run: Run, with_slow: bool, args: argparse.Namespace) -> None:
    figures = Figures()
    figures["start-up seconds (beat start to first fast call)"] = round(run.startup, 2)
    if run.sweep is not None:
        figures["fast sweep seconds (first call to last write)"] = round(run.sweep, 2)
    else:
        figures["fast sweep seconds (first call to last write)"] = (
            f"not finished after {args.timeout:g} s ({run.persisted} of {args.fast_orders} persisted)")
    figures["fast status calls / ceil(N/100) (+ the shop's orders)"] = (
        f"{run.calls} / {math.ceil(args.fast_orders / 100)} (+{math.ceil(args.shop_orders / 100)})")
    figures["fast max calls in any 1 s (rate limit)"] = f"{run.max_calls_in_1s} ({args.fast_rate_limit:g})"
    figures["shop task: task-received after s (Celery event)"] = (
        round(run.task_received_after, 2) if run.task_received_after is not None else "no event")
    figures["shop task: task-started after s (Celery event)"] = (
        round(run.task_started_after, 2) if run.task_started_after is not None else "no event")
    figures["shop task: its orders in the database after s (upper bound)"] = (
        round(run.rows_after, 2) if run.rows_after is not None else "not within the run")
    if run.events_error:
        figures["event receiver error"] = run.events_error
    figures["worker processes (peak alive)"] = run.worker_processes
    if with_slow:
        figures["slow status calls received by its sim"] = run.slow_calls
        figures["slow orders persisted"] = f"{run.slow_persisted} of {args.slow_orders}"
        figures["slow provider's consecutive failures at the end"] = run.slow_failures
    figures.show("fast and slow providers together" if with_slow else "fast provider alone")


if __name__ == "__main__":
    raise SystemExit(main())
