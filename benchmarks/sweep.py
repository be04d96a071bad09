"""Sweep benchmark: how fast the tracker polls and persists N active orders.

It runs the real system on this machine: `tracker sim` as a subprocess, a real Celery
worker and beat, Redis, and SQLite, PostgreSQL and/or MariaDB. It prints figures and asserts
nothing about time.

    python benchmarks/sweep.py --db postgresql --latency-ms 0    # 100,000 orders, the default worker
    python benchmarks/sweep.py                                   # SQLite and PostgreSQL, latency 0 and 200 ms
    python benchmarks/sweep.py --orders 1000000 --db postgresql --latency-ms 0
    python benchmarks/sweep.py --db postgresql --latency-ms 0 --pool threads --concurrency 4 --processes 2
    python benchmarks/sweep.py --db mariadb --latency-ms 0 --processes 2 --threads 4  # MariaDB at 127.0.0.1:3306
    python benchmarks/sweep.py --orders 1000 --db sqlite --latency-ms 0 --threads 4  # CI's smoke run

The worker: by default each of --processes (default 1) workers is started exactly as an
operator would, `celery -A tracker worker --loglevel WARNING --hostname ...
--without-gossip --without-mingle`, with no pool or concurrency flag and
TRACKER_WORKER_CONCURRENCY unset, so the pool and its size are the tracker's defaults.
`--pool P --concurrency N` (or the older `--threads N`, meaning `--pool threads
--concurrency N`) adds those flags, for comparisons. Whatever the pool, a worker's CPU and
memory are its whole process tree's (prefork children included, see benchmarks/procs.py).

For each (database, latency) it prints:
- the start-up time (beat started to first status call), then the sweep wall time from
  the first call to the last order's first event written, and orders persisted per
  second over it;
- status calls per sweep against ceil(N/100), the largest call, and the most calls the
  sim saw in any 1 s;
- CPU during the sweep: the workers (all processes), the database server (on PostgreSQL
  the backends of the benchmark's database plus the WAL writer, checkpointer and
  background writer; on MariaDB the whole server), the sim and Redis; and the workers'
  plus the database's CPU per order polled, in microseconds;
- memory of all worker processes: the peak of the summed VmHWM (peak RSS), and the peak
  of the summed PSS sampled every 0.5 s (prefork children share pages copy-on-write: RSS
  counts a shared page in every process, PSS splits it);
- the dispatcher's claim-query time (median of 20 claims of 100 due orders), optionally
  with many extra events in the history table (--events), and the database size;
- references on the same orders, at the concurrency the sweep reached (the peak number
  of connections open to the sim, or --floor-concurrency): a naive baseline (one status
  call per order, measured on a sample and scaled); the HTTP floor (raw batched calls to
  the sim with no persistence); the database floor (the same writes the tracker makes,
  each order's new state and its first history event, through tracker.db.bulk's
  update_rows / insert_rows in batches of 100 rows, one transaction each, on a throwaway
  database of N orders with no HTTP); and the combined floor, 1 / (1/HTTP rate +
  1/database rate), since both share the same cores. The sweep is shown as a ratio to
  the HTTP floor and as a fraction of the combined floor's rate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import requests
from sqlalchemy import Table, func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procs import DatabaseCpu, Sampler, tree_cpu_seconds  # noqa: E402
from tests.support.databases import (  # noqa: E402
    POSTGRES_ADMIN_URL,
    create_mysql_database,
    create_postgres_database,
    drop_mysql_database,
    drop_postgres_database,
)
from tests.support.deployment import deployment_settings  # noqa: E402
from tests.support.redis_db import REDIS_BASE_URL, claim_database, redis_reachable, release_database  # noqa: E402
from tracker.config import reset_settings  # noqa: E402
from tracker.db import migrate  # noqa: E402
from tracker.db.models import Order, OrderEvent, Provider  # noqa: E402
from tracker.db.session import dispose_engines, get_engine, unit_of_work  # noqa: E402
from tracker.ops.bundled_redis import BundledRedis  # noqa: E402
from tracker.sim.admin import SimAdmin  # noqa: E402

API_KEY = "bench-key-not-secret"
SAMPLE_FOR_NAIVE = 500
# The database floor's connections: the tracker's engines hold at most 10 + 10 overflow.
DATABASE_FLOOR_MAX_CONCURRENCY = 20
# The database floor's orders are all claimed by this claim, so its writes are claim-checked
# exactly as the tracker's are.
FLOOR_CLAIM_ID = 1
ORDERS_TABLE = cast(Table, Order.__table__)
EVENTS_TABLE = cast(Table, OrderEvent.__table__)


@dataclass
class Figures:
    values: dict[str, Any] = field(default_factory=dict)

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def show(self, title: str) -> None:
        print(f"\n== {title}")
        width = max(len(key) for key in self.values)
        for key, value in self.values.items():
            print(f"  {key.ljust(width)}  {value}")
        sys.stdout.flush()


@contextmanager
def sim_process(latency_ms: float, log_dir: Path) -> Iterator[tuple[SimAdmin, int]]:
    env = dict(os.environ, TRACKER_SIM_KEY=API_KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli.main", "sim", "--port", "0", "--latency-ms", str(latency_ms),
         "--no-natural-drops", "--quiet"],
        stdout=subprocess.PIPE, stderr=(log_dir / "sim.log").open("wb"), env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        url = line.split()[3]
        # Seeding a million orders is one admin call: give it time.
        admin = SimAdmin(url.rsplit("/api/v2", 1)[0], timeout=900.0)
        admin.wait_ready()
        yield admin, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work / 'bench.db'}"
        return
    create, drop = (create_mysql_database, drop_mysql_database) if kind == "mariadb" else (create_postgres_database, drop_postgres_database)
    url = create()
    try:
        yield url
    finally:
        dispose_engines()
        drop(url)


@contextmanager
def broker(work: Path) -> Iterator[str]:
    if redis_reachable(REDIS_BASE_URL):
        number = claim_database(REDIS_BASE_URL)
        try:
            yield f"{REDIS_BASE_URL}/{number}"
        finally:
            release_database(REDIS_BASE_URL, number)
        return
    server = BundledRedis(work / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def start(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=(log_dir / f"{name}.log").open("wb"), stderr=subprocess.STDOUT)


def _stat_cpu_seconds(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_program() -> dict[str, float]:
    """CPU seconds used so far by every process of the programs that share the machine
    during a sweep (dead processes' time is lost, so compare live ones only)."""
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        program = "python" if name.startswith("python") or name.startswith("celery") else name
        totals[program] = totals.get(program, 0.0) + _stat_cpu_seconds(text)
    return totals


def register(database_url: str, sim_url: str, ids: list[int], rate_limit: float) -> float:
    from tracker.core.clock import utcnow
    from tracker.config import get_settings
    from tracker.orders.enqueue import track_orders
    from tracker.providers.registry import ProviderSpec, upsert_provider

    started = time.monotonic()
    with unit_of_work(database_url) as session:
        upsert_provider(session, ProviderSpec("bench", sim_url, API_KEY, rate_limit=rate_limit), get_settings(), utcnow())
    for offset in range(0, len(ids), 20_000):
        with unit_of_work(database_url) as session:
            track_orders(session, "bench", ids[offset : offset + 20_000], now=utcnow())
    return time.monotonic() - started


def polled_count(database_url: str) -> int:
    with unit_of_work(database_url) as session:
        return int(session.scalar(select(func.count()).select_from(Order).where(Order.last_observed_at.is_not(None))) or 0)


def sim_status_ids(sim: SimAdmin) -> int:
    status = sim.stats()["actions"].get("status")
    return int(status["ids_total"]) if status else 0


def sweep_span(database_url: str) -> tuple[float, float]:
    """When the sweep's first status call went out and its last write was made, on the
    time.time() clock: an order's last_observed_at is stamped just before its call, and
    its updated_at when its answer is applied, just before the commit."""
    with unit_of_work(database_url) as session:
        first, last = session.execute(select(func.min(Order.last_observed_at), func.max(Order.updated_at))).one()
    assert first is not None and last is not None
    return float(first.timestamp()), float(last.timestamp())


def floor_seconds(sim_url: str, ids: list[int], concurrency: int) -> float:
    """Raw batched HTTP calls with no persistence: the least any tracker could spend."""
    chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
    local = requests.Session()
    sessions = [requests.Session() for _ in range(concurrency)]

    def call(index: int) -> None:
        session = sessions[index % concurrency]
        response = session.post(sim_url, data={"key": API_KEY, "action": "status", "orders": ",".join(map(str, chunks[index]))})
        response.raise_for_status()
        json.loads(response.text)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(len(chunks))))
    local.close()
    return time.monotonic() - started


def naive_seconds(sim_url: str, ids: list[int], concurrency: int) -> float:
    """One status call per order, as most panels' scripts do: a sample, scaled to N."""
    sample = ids[:SAMPLE_FOR_NAIVE]
    sessions = [requests.Session() for _ in range(concurrency)]

    def call(index: int) -> None:
        response = sessions[index % concurrency].post(sim_url, data={"key": API_KEY, "action": "status", "order": sample[index]})
        response.raise_for_status()

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(len(sample))))
    return (time.monotonic() - started) * len(ids) / len(sample)


def claim_query_ms(database_url: str, extra_events: int) -> float:
    """Median time of the dispatcher's claim query for 100 due orders, rolled back."""
    from tracker.core.clock import utcnow
    from tracker.db.claims import claim_due

    engine = get_engine(database_url)
    with engine.begin() as connection:
        connection.execute(ORDERS_TABLE.update().values(next_poll_at=utcnow()))
        if extra_events and engine.dialect.name == "postgresql":
            connection.execute(text(
                "INSERT INTO order_events (order_id, seq, at, to_status) "
                "SELECT o.id, 1000 + g, now(), 'Pending' FROM orders o "
                "CROSS JOIN generate_series(1, :per_order) g"
            ), {"per_order": max(1, extra_events // max(1, _order_total(database_url)))})
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE"))
        elif engine.dialect.name == "mysql":
            connection.execute(text("ANALYZE TABLE orders"))
    with unit_of_work(database_url) as session:
        provider_id = session.scalar(select(Provider.id))
    timings = []
    for _ in range(20):
        session_factory_session = unit_of_work(database_url)
        with session_factory_session as session:
            now = utcnow()
            started = time.perf_counter()
            claim_due(session, Order, provider_id=provider_id, now=now, lease_until=now, batch_size=100, max_batches=1)
            timings.append((time.perf_counter() - started) * 1000)
            session.rollback()
    return round(statistics.median(timings), 2)


def _order_total(database_url: str) -> int:
    with unit_of_work(database_url) as session:
        return int(session.scalar(select(func.count()).select_from(Order)) or 0)


def database_size_mb(database_url: str, work: Path) -> float:
    if database_url.startswith("sqlite"):
        return round(sum(path.stat().st_size for path in work.glob("bench.db*")) / 2**20, 1)
    with unit_of_work(database_url) as session:
        if session.get_bind().dialect.name == "mysql":
            size = session.scalar(text(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema = DATABASE()"
            ))
        else:
            size = session.scalar(text("SELECT pg_database_size(current_database())"))
        return round(int(size or 0) / 2**20, 1)


def worker_command(index: int, args: argparse.Namespace) -> list[str]:
    """The operator's command; pool flags only when asked for, to compare pools."""
    command = [sys.executable, "-m", "celery", "-A", "tracker", "worker",
               "--loglevel", os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"),
               "--hostname", f"bench{index}@%h", "--without-gossip", "--without-mingle"]
    if args.pool:
        command += ["--pool", args.pool]
    if args.concurrency:
        command += ["--concurrency", str(args.concurrency)]
    return command


def worker_description(args: argparse.Namespace) -> str:
    if not args.pool and not args.concurrency:
        return f"{args.processes} worker(s), default command (the tracker's default pool)"
    return f"{args.processes} worker(s), --pool {args.pool or '(default)'} --concurrency {args.concurrency or '(default)'}"


def benchmark_settings(database_url: str, broker_url: str, state_dir: Path) -> dict[str, str]:
    """The tracker's settings for one measured sweep: production mode, and nothing due
    twice while we measure."""
    return {
        **deployment_settings(database_url, broker_url),
        "TRACKER_POLL_INTERVAL": "86400",
        "TRACKER_TICK_INTERVAL": "1",
        "TRACKER_STATE_DIR": str(state_dir),
    }


def worker_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    # What an operator gets: the pool's size comes from the tracker's defaults, or from
    # the command's --concurrency, never from a variable left in this shell.
    env.pop("TRACKER_WORKER_CONCURRENCY", None)
    env.pop("TRACKER_WORKER_POOL", None)
    return env


def database_floor_seconds(kind: str, work: Path, sim_url: str, orders: int, concurrency: int, batch: int = 100) -> float:
    """The database's own floor for the sweep's writes: each order's new state (claim-
    checked) and its first history event, as tracker.polling.engine writes them, through
    the same bulk statements, ``batch`` rows per statement and one transaction per batch, at the
    given concurrency; no HTTP, no Celery. On a throwaway database of its own with N
    orders, all held by one claim."""
    from tracker.core.clock import utcnow
    from tracker.config import get_settings
    from tracker.db.bulk import insert_rows, update_rows
    from tracker.providers.registry import ProviderSpec, upsert_provider

    floor_dir = work / "database-floor"
    floor_dir.mkdir(exist_ok=True)
    with database(kind, floor_dir) as url:
        migrate.upgrade(url)
        now = utcnow()
        with unit_of_work(url) as session:
            provider, _ = upsert_provider(session, ProviderSpec("floor", sim_url, API_KEY, rate_limit=1000.0),
                                          get_settings(), now)
            session.flush()
            provider_id = provider.id
        for offset in range(0, orders, 10_000):
            with unit_of_work(url) as session:
                insert_rows(session, ORDERS_TABLE, [
                    {"provider_id": provider_id, "external_id": external_id, "service_id": 1, "quantity": 1000,
                     "next_poll_at": now, "created_at": now, "updated_at": now, "claim_id": FLOOR_CLAIM_ID,
                     "final": False, "event_count": 0, "unchanged_polls": 0, "consecutive_not_found": 0}
                    for external_id in range(offset + 1, min(orders, offset + 10_000) + 1)
                ])
        with unit_of_work(url) as session:
            row_ids = list(session.scalars(select(Order.id).order_by(Order.id)))
            if kind == "postgresql":
                session.execute(text("ANALYZE orders"))
        # A first answer for a pending order, as the sim gives it and the engine writes it.
        observed = utcnow()
        later = observed + timedelta(seconds=86400)
        charge = Decimal("1.2345")
        state_template = {"status": "Pending", "raw_status": "Pending", "remains": 1000, "charge": charge,
                          "start_count": 0, "currency": "USD", "final": False, "last_observed_at": observed,
                          "consecutive_not_found": 0, "completed_at": None, "event_count": 1,
                          "unchanged_polls": 0, "next_poll_at": later, "claim_id": None, "updated_at": observed}
        event_template = {"from_status": None, "to_status": "Pending", "raw_status": "Pending", "remains": 1000,
                          "charge": charge, "start_count": 0, "seq": 1, "at": observed}
        # Rows are built per batch (a copy of a template, cheap) rather than all at once:
        # at a million orders they would hold a gigabyte or more.
        batches = [row_ids[offset : offset + batch] for offset in range(0, len(row_ids), batch)]

        def write(chunk: list[int]) -> int:
            state = [{"row_id": row_id, **state_template} for row_id in chunk]
            events = [{"order_id": row_id, **event_template} for row_id in chunk]
            with unit_of_work(url) as session:
                written = update_rows(session, ORDERS_TABLE, state, claim_id=FLOOR_CLAIM_ID)
                insert_rows(session, EVENTS_TABLE, events)
            return len(written)

        started = time.monotonic()
        with ThreadPoolExecutor(max(1, min(concurrency, DATABASE_FLOOR_MAX_CONCURRENCY))) as pool:
            written = sum(pool.map(write, batches))
        elapsed = time.monotonic() - started
        if written != orders:
            raise RuntimeError(f"database floor wrote {written} of {orders} orders")
        dispose_engines()
    return elapsed


def run_one(kind: str, latency_ms: float, args: argparse.Namespace) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as tmp:
        work = Path(tmp)
        logs = Path(args.log_dir) / f"{kind}-{latency_ms:g}ms" if args.log_dir else work
        logs.mkdir(parents=True, exist_ok=True)
        with database(kind, work) as database_url, broker(work) as broker_url, sim_process(latency_ms, logs) as (sim, sim_pid):
            migrate.upgrade(database_url)
            seeding = time.monotonic()
            ids = sim.seed_orders(count=args.orders, service=1, pending_s=10**8)
            seed_seconds = time.monotonic() - seeding
            env = worker_env({
                **os.environ,
                **benchmark_settings(database_url, broker_url, work / "state"),
                "TRACKER_LEASE_SECONDS": "600",
            })
            os.environ.update({key: env[key] for key in ("TRACKER_DATABASE_URL", "TRACKER_SECRET_KEY", "TRACKER_MODE", "TRACKER_STATE_DIR")})
            reset_settings()
            figures["orders"] = args.orders
            figures["worker command"] = " ".join(worker_command(0, args)[2:])
            figures["sim seeding seconds"] = round(seed_seconds, 2)
            figures["enqueue seconds (CLI path, bulk insert)"] = round(register(database_url, sim.url, ids, args.rate_limit), 2)
            sim.reset_stats()

            workers = [start(f"worker{index}", worker_command(index, args), env, logs) for index in range(args.processes)]
            database_cpu = DatabaseCpu(kind, POSTGRES_ADMIN_URL, database_url.rpartition("/")[2])
            sim_port = int(sim.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            sampler = Sampler(lambda: [worker.pid for worker in workers], sim_port=sim_port, database_cpu=database_cpu)
            time.sleep(3)
            started = time.monotonic()
            started_wall = time.time()
            beat = start("beat", [sys.executable, "-m", "celery", "-A", "tracker", "beat", "--loglevel", "WARNING",
                                  "--schedule", str(work / "beat-schedule")], env, logs)
            try:
                with sampler:
                    deadline = started + args.timeout
                    cpu_at_first_call: tuple[dict[str, float], float, float] | None = None

                    def cpu_now() -> tuple[dict[str, float], float, float]:
                        return (cpu_by_program(), _stat_cpu_seconds(Path(f"/proc/{sim_pid}/stat").read_text()),
                                sum(tree_cpu_seconds(worker.pid) for worker in workers))

                    def check(what: str) -> None:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"sweep not finished after {args.timeout}s: {what}")
                        if any(worker.poll() is not None for worker in workers):
                            raise RuntimeError("a worker died: see " + str(logs))

                    # Watch the sim's counters, not the database: a count over N rows every
                    # few milliseconds would load the database we are measuring.
                    while (answered := sim_status_ids(sim)) < args.orders:
                        check(f"{answered} IDs answered")
                        if cpu_at_first_call is None and answered > 0:
                            cpu_at_first_call = cpu_now()
                            database_cpu.start()
                        time.sleep(0.05)
                    while (polled := polled_count(database_url)) < args.orders:
                        check(f"{polled} orders persisted")
                        time.sleep(0.2)
                    sampler.sample()
                    cpu_at_end = cpu_now()
                database_used = database_cpu.used()
                database_cpu.close()
                first_call, last_write = sweep_span(database_url)
                sweep = last_write - first_call
                worker_cpu = cpu_at_end[2]
            finally:
                for process in [beat, *workers]:
                    process.terminate()
                for process in [beat, *workers]:
                    process.wait(timeout=60)
            stats = sim.stats()["actions"]["status"]
            peaks = sampler.peaks
            figures["start-up seconds (beat start to first call)"] = round(first_call - started_wall, 2)
            figures["sweep seconds (first call to last write)"] = round(sweep, 2)
            figures["orders persisted per second"] = round(args.orders / sweep)
            figures["status calls / ceil(N/100)"] = f"{stats['calls']} / {math.ceil(args.orders / 100)}"
            figures["IDs asked in all"] = stats["ids_total"]
            figures["largest call (IDs)"] = stats["max_ids"]
            figures["max calls in any 1 s"] = stats["max_calls_in_any_1s_window"]
            figures["calls in flight, peak (connections open to the sim)"] = sampler.sim_connections_peak
            figures["worker processes (peak alive, all ever seen)"] = f"{peaks.processes}, {len(peaks.pids_seen)}"
            figures["worker peak RSS MB (sum of VmHWM, all processes)"] = round(peaks.hwm_kb / 1024, 1)
            figures["worker peak PSS MB (sum, sampled every 0.5 s)"] = round(peaks.pss_kb / 1024, 1)
            figures["worker CPU seconds (start-up included)"] = round(worker_cpu, 1)
            if cpu_at_first_call is not None:
                programs_before, sim_before, workers_before = cpu_at_first_call
                programs_after, sim_after, workers_after = cpu_at_end
                worker_used = workers_after - workers_before
                used = {
                    "workers": worker_used,
                    "database": database_used,
                    "sim": sim_after - sim_before,
                    "redis": programs_after.get("redis-server", 0.0) - programs_before.get("redis-server", 0.0),
                }
                figures["CPU seconds during the sweep"] = ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
                worker_us = worker_used / args.orders * 1e6
                if database_cpu.measured:
                    database_us = database_used / args.orders * 1e6
                    figures["CPU µs per order, workers + database"] = (
                        f"{worker_us + database_us:.0f} (workers {worker_us:.0f}, database {database_us:.0f})"
                    )
                else:
                    figures["CPU µs per order, workers (database inside them)"] = f"{worker_us:.0f}"
            if sampler.errors:
                figures["sampler errors"] = "; ".join(sampler.errors)

            concurrency = args.floor_concurrency or max(1, sampler.sim_connections_peak)
            figures["floors' concurrency"] = concurrency
            floor = floor_seconds(sim.url, ids, concurrency)
            naive = naive_seconds(sim.url, ids, concurrency)
            database_floor = database_floor_seconds(kind, work, sim.url, args.orders, concurrency, args.floor_batch)
            http_rate = args.orders / floor
            database_rate = args.orders / database_floor
            combined_rate = 1 / (1 / http_rate + 1 / database_rate)
            figures["floor seconds (batched HTTP, no persistence)"] = f"{floor:.2f} ({http_rate:.0f} orders/s)"
            figures["naive seconds (1 call per order, scaled)"] = round(naive, 1)
            figures["sweep / floor"] = round(sweep / floor, 2)
            if concurrency != REFERENCE_FLOOR_THREADS:
                # The reference issue #13 set its targets against: 4 plain threads.
                reference = floor_seconds(sim.url, ids, REFERENCE_FLOOR_THREADS)
                figures[f"floor seconds at {REFERENCE_FLOOR_THREADS} threads"] = f"{reference:.2f} ({args.orders / reference:.0f} orders/s)"
                figures[f"sweep / floor at {REFERENCE_FLOOR_THREADS} threads"] = round(sweep / reference, 2)
            figures[f"{kind} floor seconds (bulk writes of {args.floor_batch} rows, no HTTP)"] = f"{database_floor:.2f} ({database_rate:.0f} orders/s)"
            figures["combined floor orders/s (1 / (1/HTTP + 1/database))"] = round(combined_rate)
            figures["sweep orders/s / combined floor"] = round(args.orders / sweep / combined_rate, 2)
            figures["claim query ms (100 of N due)"] = claim_query_ms(database_url, args.events if kind == "postgresql" else 0)
            if args.events and kind == "postgresql":
                figures["extra events in history for the claim query"] = args.events
            figures["database size MB"] = database_size_mb(database_url, work)
            dispose_engines()
    return figures


REFERENCE_FLOOR_THREADS = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mariadb", "both", "all"], default="both",
                        help="both: SQLite and PostgreSQL; all: MariaDB too")
    parser.add_argument("--latency-ms", type=float, action="append", help="sim latency; repeat for several (default 0 and 200)")
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="provider rate limit, requests/s")
    parser.add_argument("--processes", type=int, default=1, help="workers started (default 1)")
    parser.add_argument("--pool", help="add --pool POOL to the worker command (default: the tracker's default pool)")
    parser.add_argument("--concurrency", type=int, help="add --concurrency N to the worker command")
    parser.add_argument("--threads", type=int, help="the same as --pool threads --concurrency THREADS")
    parser.add_argument("--floor-concurrency", type=int,
                        help="the floors' concurrency (default: the most connections the sweep had open to the sim)")
    parser.add_argument("--floor-batch", type=int, default=100,
                        help="the database floor's rows per statement and transaction (default 100; a poll task "
                             "of the tracker writes up to TRACKER_CALLS_PER_TASK x 100 in one)")
    parser.add_argument("--events", type=int, default=0, help="extra history rows for the claim-query figure (PostgreSQL)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the sweep may take")
    parser.add_argument("--log-dir", help="keep the worker, beat and sim logs here (default: discarded)")
    args = parser.parse_args()
    if args.threads:
        args.pool, args.concurrency = args.pool or "threads", args.threads
    latencies = args.latency_ms or [0.0, 200.0]
    kinds = {"both": ["sqlite", "postgresql"], "all": ["sqlite", "postgresql", "mariadb"]}.get(args.db, [args.db])
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().machine}; python {sys.version.split()[0]}")
    for kind in kinds:
        for latency in latencies:
            run_one(kind, latency, args).show(f"{kind}, sim latency {latency:g} ms, rate limit {args.rate_limit:g}/s, "
                                              f"{worker_description(args)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
