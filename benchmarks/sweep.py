"""Sweep benchmark: how fast the tracker polls and persists N active orders.

It runs the real system on this machine: `tracker sim` as a subprocess, a real Celery
worker and beat, Redis, and SQLite, PostgreSQL and/or MariaDB. It prints figures and asserts
nothing about time.

    python benchmarks/sweep.py --processes 2 --threads 4   # 100,000 orders, SQLite and PostgreSQL, latency 0 and 200 ms
    python benchmarks/sweep.py --db mariadb --latency-ms 0 --processes 2 --threads 4  # MariaDB at 127.0.0.1:3306
    python benchmarks/sweep.py --orders 1000000 --db postgresql --latency-ms 0 --processes 2 --threads 4 --events 10000000
    python benchmarks/sweep.py --db postgresql --latency-ms 200 --rate-limit 20 --processes 2 --threads 4
    python benchmarks/sweep.py --orders 1000 --db sqlite --latency-ms 0 --threads 4  # CI's smoke run

For each (database, latency) it prints:
- the start-up time (beat started to first status call), then the sweep wall time from
  the first call to the last order's first event written, and orders persisted per
  second over it;
- the CPU seconds the workers, the database server, the sim and Redis used during the
  sweep: on one machine they compete for the same cores;
- status calls per sweep against ceil(N/100), and the largest call;
- the dispatcher's claim-query time (median of 20 claims of 100 due orders), optionally
  with many extra events in the history table (--events);
- the worker's peak RSS, and the database size;
- two references on the same orders: a naive baseline (one status call per order,
  measured on a sample and scaled) and the floor (raw batched calls to the sim with no
  persistence, same concurrency), and our sweep time as a ratio to the floor.
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
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import (  # noqa: E402
    create_mysql_database,
    create_postgres_database,
    drop_mysql_database,
    drop_postgres_database,
)
from tests.support.redis_db import REDIS_BASE_URL, claim_database, redis_reachable, release_database  # noqa: E402
from tracker.config import reset_settings  # noqa: E402
from tracker.db import migrate  # noqa: E402
from tracker.db.models import Order, Provider  # noqa: E402
from tracker.db.session import dispose_engines, get_engine, unit_of_work  # noqa: E402
from tracker.ops.bundled_redis import BundledRedis  # noqa: E402
from tracker.sim.admin import SimAdmin  # noqa: E402

API_KEY = "bench-key-not-secret"
SAMPLE_FOR_NAIVE = 500
# Process names of the database servers, for their CPU time.
DATABASE_SERVERS = ("postgres", "mariadbd", "mysqld")


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
        admin = SimAdmin(url.rsplit("/api/v2", 1)[0])
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


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its children (the worker's threads live in one process)."""
    total = 0.0
    for candidate in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
    return round(total, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


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


def database_backends_cpu(database_url: str) -> dict[int, float]:
    """PostgreSQL: CPU seconds used so far by each server process serving the benchmark's
    database, this process's own excepted. Unlike the per-program total, it leaves out
    whatever else the same server does meanwhile (other databases, its background
    processes). Empty for the other databases."""
    if not database_url.startswith("postgresql"):
        return {}
    with get_engine(database_url).connect() as connection:
        pids = connection.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).scalars().all()
    used: dict[int, float] = {}
    for pid in pids:
        try:
            used[pid] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return used


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def register(database_url: str, sim_url: str, ids: list[int], rate_limit: float) -> float:
    from tracker.clock import utcnow
    from tracker.config import get_settings
    from tracker.usecases.enqueue import track_orders
    from tracker.usecases.providers import ProviderSpec, upsert_provider

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
    from tracker.clock import utcnow
    from tracker.db.claims import claim_due

    engine = get_engine(database_url)
    with engine.begin() as connection:
        connection.execute(Order.__table__.update().values(next_poll_at=utcnow()))
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
            claim_due(session, Order, provider_id=provider_id, now=now, lease_until=now, batch_size=100, max_batches=1)  # type: ignore[arg-type]
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


def run_one(kind: str, latency_ms: float, args: argparse.Namespace) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as tmp:
        work = Path(tmp)
        logs = Path(args.log_dir) / f"{kind}-{latency_ms:g}ms" if args.log_dir else work
        logs.mkdir(parents=True, exist_ok=True)
        with database(kind, work) as database_url, broker(work) as broker_url, sim_process(latency_ms, logs) as (sim, sim_pid):
            migrate.upgrade(database_url)
            ids = sim.seed_orders(count=args.orders, service=1, pending_s=10**8)
            env = dict(
                os.environ,
                TRACKER_DATABASE_URL=database_url,
                TRACKER_BROKER_URL=broker_url,
                TRACKER_SECRET_KEY=Fernet.generate_key().decode(),
                TRACKER_MODE="production",
                # One sweep: nothing is due twice while we measure.
                TRACKER_POLL_INTERVAL="86400",
                TRACKER_TICK_INTERVAL="1",
                TRACKER_LEASE_SECONDS="600",
                TRACKER_WORKER_CONCURRENCY=str(args.threads),
                TRACKER_STATE_DIR=str(work / "state"),
            )
            os.environ.update({key: env[key] for key in ("TRACKER_DATABASE_URL", "TRACKER_SECRET_KEY", "TRACKER_MODE", "TRACKER_STATE_DIR")})
            reset_settings()
            figures["orders"] = args.orders
            figures["enqueue seconds (CLI path, bulk insert)"] = round(register(database_url, sim.url, ids, args.rate_limit), 2)

            floor = floor_seconds(sim.url, ids, args.threads * args.processes)
            naive = naive_seconds(sim.url, ids, args.threads * args.processes)
            sim.reset_stats()

            workers = [
                start(f"worker{index}", [sys.executable, "-m", "celery", "-A", "tracker", "worker", "--loglevel", os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"),
                                         "--hostname", f"bench{index}@%h", "--without-gossip", "--without-mingle"], env, logs)
                for index in range(args.processes)
            ]
            time.sleep(3)
            started = time.monotonic()
            started_wall = time.time()
            beat = start("beat", [sys.executable, "-m", "celery", "-A", "tracker", "beat", "--loglevel", "WARNING",
                                  "--schedule", str(work / "beat-schedule")], env, logs)
            try:
                deadline = started + args.timeout
                cpu_at_first_call: tuple[dict[str, float], float, list[float]] | None = None

                def cpu_now() -> tuple[dict[str, float], float, list[float]]:
                    return cpu_by_program(), cpu_seconds(sim_pid), [cpu_seconds(w.pid) for w in workers]

                backends_at_first_call: dict[int, float] = {}

                def check(what: str) -> None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"sweep not finished after {args.timeout}s: {what}")
                    if any(worker.poll() is not None for worker in workers):
                        raise RuntimeError("a worker died: see " + str(work))

                # Watch the sim's counters, not the database: a count over N rows every
                # few milliseconds would load the database we are measuring.
                while (answered := sim_status_ids(sim)) < args.orders:
                    check(f"{answered} IDs answered")
                    if cpu_at_first_call is None and answered > 0:
                        cpu_at_first_call = cpu_now()
                        backends_at_first_call = database_backends_cpu(database_url)
                    time.sleep(0.05)
                while (polled := polled_count(database_url)) < args.orders:
                    check(f"{polled} orders persisted")
                    time.sleep(0.2)
                cpu_at_end = cpu_now()
                backends_at_end = database_backends_cpu(database_url)
                first_call, last_write = sweep_span(database_url)
                sweep = last_write - first_call
                rss = sum(peak_rss_mb(worker.pid) for worker in workers)
                worker_cpu = sum(cpu_seconds(worker.pid) for worker in workers)
            finally:
                for process in [beat, *workers]:
                    process.terminate()
                for process in [beat, *workers]:
                    process.wait(timeout=30)
            stats = sim.stats()["actions"]["status"]
            figures["start-up seconds (beat start to first call)"] = round(first_call - started_wall, 2)
            figures["sweep seconds (first call to last write)"] = round(sweep, 2)
            figures["orders persisted per second"] = round(args.orders / sweep)
            figures["status calls / ceil(N/100)"] = f"{stats['calls']} / {math.ceil(args.orders / 100)}"
            figures["IDs asked in all"] = stats["ids_total"]
            figures["largest call (IDs)"] = stats["max_ids"]
            figures["max calls in any 1 s"] = stats["max_calls_in_any_1s_window"]
            figures["worker peak RSS MB"] = rss
            figures["worker CPU seconds (start-up included)"] = round(worker_cpu, 1)
            if cpu_at_first_call is not None:
                programs_before, sim_before, workers_before = cpu_at_first_call
                programs_after, sim_after, workers_after = cpu_at_end
                used = {
                    "workers": sum(workers_after) - sum(workers_before),
                    "database server": sum(
                        programs_after.get(name, 0.0) - programs_before.get(name, 0.0) for name in DATABASE_SERVERS
                    ),
                    "sim": sim_after - sim_before,
                    "redis": programs_after.get("redis-server", 0.0) - programs_before.get("redis-server", 0.0),
                }
                figures["CPU seconds during the sweep"] = ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
                if backends_at_end:
                    backends = sum(seconds - backends_at_first_call.get(pid, 0.0) for pid, seconds in backends_at_end.items())
                    figures["CPU seconds during the sweep, this database's backends"] = f"{backends:.1f}"
                    figures["CPU µs per order: workers / this database's backends"] = (
                        f"{used['workers'] / args.orders * 1e6:.0f} / {backends / args.orders * 1e6:.0f}"
                    )
            figures["floor seconds (batched HTTP, no persistence)"] = round(floor, 2)
            figures["naive seconds (1 call per order, scaled)"] = round(naive, 1)
            figures["sweep / floor"] = round(sweep / floor, 2)
            figures["claim query ms (100 of N due)"] = claim_query_ms(database_url, args.events if kind == "postgresql" else 0)
            if args.events and kind == "postgresql":
                figures["extra events in history for the claim query"] = args.events
            figures["database size MB"] = database_size_mb(database_url, work)
            dispose_engines()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mariadb", "both", "all"], default="both",
                        help="both: SQLite and PostgreSQL; all: MariaDB too")
    parser.add_argument("--latency-ms", type=float, action="append", help="sim latency; repeat for several (default 0 and 200)")
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="provider rate limit, requests/s")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker process")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--events", type=int, default=0, help="extra history rows for the claim-query figure (PostgreSQL)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--log-dir", help="keep the worker, beat and sim logs here (default: discarded)")
    args = parser.parse_args()
    latencies = args.latency_ms or [0.0, 200.0]
    kinds = {"both": ["sqlite", "postgresql"], "all": ["sqlite", "postgresql", "mariadb"]}.get(args.db, [args.db])
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().machine}; python {sys.version.split()[0]}")
    for kind in kinds:
        for latency in latencies:
            run_one(kind, latency, args).show(f"{kind}, sim latency {latency:g} ms, rate limit {args.rate_limit:g}/s, "
                                              f"{args.processes} worker process(es) x {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
