"""CPU per order of the polling engine, in process: the worker's Python and the
database server's backends, measured apart from everything else on the machine.

It seeds N pending orders at the sim (no latency), claims them as one dispatcher tick
would, and runs ``poll_batch`` on every claim in this thread. The worker figure is this
thread's CPU time inside ``poll_batch`` (the sim runs in another process); the database
figure is the CPU time of the PostgreSQL backends serving this process's connections
(read from /proc, so only on the machine that runs the server). Each round resets the
orders to "never polled", so every round is a first sweep (one event per order), like
``benchmarks/sweep.py``; ``--repolls`` adds rounds of second polls (no event).

    python benchmarks/poll_cpu.py --orders 20000 --rounds 3
    python benchmarks/poll_cpu.py --orders 20000 --rounds 1 --profile /tmp/poll.prof

It prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sweep import benchmark_settings, broker, database, register, sim_process  # noqa: E402
from tracker.config import get_settings, reset_settings  # noqa: E402
from tracker.db import migrate  # noqa: E402
from tracker.db.session import dispose_engines, get_engine  # noqa: E402


def backend_cpu(database_url: str) -> float:
    """CPU seconds used so far by the server processes connected to our database."""
    engine = get_engine(database_url)
    total = 0.0
    with engine.connect() as connection:
        dialect = connection.dialect.name
        if dialect != "postgresql":
            return 0.0
        pids = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars().all()
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


RESET = """
UPDATE orders SET status = NULL, raw_status = NULL, remains = NULL, charge = NULL,
  start_count = NULL, currency = NULL, last_observed_at = NULL, consecutive_not_found = 0,
  unchanged_polls = 0, event_count = 0, next_poll_at = :now, claim_id = NULL, final = false
"""


class StatementCPU:
    """The backend's CPU time per statement, from /proc/<pid>/schedstat (nanoseconds)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._started: dict[int, tuple[int, int]] = {}

    @staticmethod
    def _ns(pid: int) -> int:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            pid = conn.connection.dbapi_connection.info.backend_pid
            self._started[id(cursor)] = (pid, self._ns(pid))

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            pid, started = self._started.pop(id(cursor))
            key = " ".join(statement.split())[:70]
            self.totals[key] = self.totals.get(key, 0.0) + (self._ns(pid) - started) / 1e9

        @event.listens_for(engine, "commit")
        def before_commit(conn: Any) -> None:
            pid = conn.connection.dbapi_connection.info.backend_pid
            self._started[-pid] = (pid, self._ns(pid))

        @event.listens_for(engine, "engine_connect")
        def noop(conn: Any) -> None:
            return None

    def show(self, orders: int) -> None:
        for key, seconds in sorted(self.totals.items(), key=lambda item: -item[1]):
            print(f"    {seconds / orders * 1e6:6.1f} µs  {key}")
        self.totals.clear()


STATEMENTS: StatementCPU | None = None


def one_round(database_url: str, fresh: bool, profiler: cProfile.Profile | None) -> tuple[float, float, float, int]:
    from tracker.core.clock import utcnow
    from tracker.polling.engine import poll_batch
    from tracker.polling.orders import ORDERS
    from tracker.polling.dispatch import PollWork, claim_all
    from tracker.providers.gateway import shared_gateway

    engine = get_engine(database_url)
    with engine.begin() as connection:
        if fresh:
            connection.execute(text("DELETE FROM order_events"))
            connection.execute(text(RESET), {"now": utcnow()})
        else:
            connection.execute(text("UPDATE orders SET next_poll_at = :now, claim_id = NULL"), {"now": utcnow()})
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    settings = get_settings()
    db_before = backend_cpu(database_url)
    claim_cpu_before = time.thread_time()
    work = [piece for piece in claim_all(settings, utcnow()) if isinstance(piece, PollWork)]
    claim_cpu = time.thread_time() - claim_cpu_before
    db_claim = backend_cpu(database_url) - db_before
    orders = sum(len(piece.claim.row_ids) for piece in work)
    gate = shared_gateway(settings)
    db_before = backend_cpu(database_url)
    cpu_before = time.thread_time()
    if profiler is not None:
        profiler.enable()
    for piece in work:
        poll_batch(ORDERS, piece.provider_id, piece.claim.claim_id, piece.claim.row_ids, settings=settings, gateway=gate)
    if profiler is not None:
        profiler.disable()
    worker = time.thread_time() - cpu_before
    db = backend_cpu(database_url) - db_before
    if STATEMENTS is not None:
        STATEMENTS.show(orders)
    print(f"  claim: worker {claim_cpu / orders * 1e6:.1f} µs, db {db_claim / orders * 1e6:.1f} µs per order")
    return worker, db, db_claim, orders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repolls", type=int, default=0, help="rounds of second polls (no event) after")
    parser.add_argument("--db", choices=["postgresql", "sqlite", "mariadb"], default="postgresql")
    parser.add_argument("--statements", action="store_true", help="database CPU per statement (PostgreSQL, same machine)")
    parser.add_argument("--profile", help="write a cProfile of the poll_batch calls here")
    args = parser.parse_args()
    # CPU time, not wall time: waits on the sim, Redis and the database are not costs here.
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    with tempfile.TemporaryDirectory(prefix="tracker-pollcpu-") as tmp:
        work = Path(tmp)
        with database(args.db, work) as database_url, broker(work) as broker_url, sim_process(0, work) as (sim, _):
            migrate.upgrade(database_url)
            ids = sim.seed_orders(count=args.orders, service=1, pending_s=10**8)
            os.environ.update(benchmark_settings(database_url, broker_url, work / "state"), TRACKER_LEASE_SECONDS="600")
            reset_settings()
            if args.statements:
                global STATEMENTS
                STATEMENTS = StatementCPU()
                STATEMENTS.attach(get_engine(database_url))
            register(database_url, sim.url, ids, 1000.0)
            for label, rounds, fresh in (("first polls", args.rounds, True), ("repolls", args.repolls, False)):
                results = []
                for _ in range(rounds):
                    worker, db, _claim, orders = one_round(database_url, fresh, profiler)
                    results.append((worker / orders * 1e6, db / orders * 1e6))
                    print(f"  {label}: worker {results[-1][0]:.1f} µs, db {results[-1][1]:.1f} µs per order ({orders} orders)")
                if results:
                    print(
                        f"{label} median of {rounds}: worker {statistics.median(r[0] for r in results):.1f} µs, "
                        f"database {statistics.median(r[1] for r in results):.1f} µs per order"
                    )
            dispose_engines()
            get_engine  # noqa: B018
    if profiler is not None:
        profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
