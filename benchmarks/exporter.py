"""Exporter benchmark: how long one Prometheus scrape of `tracker exporter` takes with
N orders (default 1,000,000) on PostgreSQL.

It creates a throw-away PostgreSQL database, applies the migrations, registers three
providers, seeds the orders with one `INSERT ... SELECT generate_series` (rows as wide as
real ones: link, charge, counts, timestamps), plus refills, refill requests and outbox
events, runs VACUUM ANALYZE (as autovacuum would), starts `tracker exporter` as a
subprocess and times scrapes of /metrics over HTTP. It prints the figures and asserts
nothing about time.

    python benchmarks/exporter.py                          # 1,000,000 orders, 10% active
    python benchmarks/exporter.py --active-share 1.0       # every order active and overdue
    python benchmarks/exporter.py --orders 100000 --scrapes 5

It also prints PostgreSQL's plan of the per-status count, the query that grows with the
orders table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import create_postgres_database, drop_postgres_database  # noqa: E402
from tests.support.deployment import deployment_settings  # noqa: E402
from tests.support.redis_db import REDIS_BASE_URL, claim_database, redis_reachable, release_database  # noqa: E402
from tracker.config import reset_settings  # noqa: E402
from tracker.db import migrate  # noqa: E402
from tracker.db.session import dispose_engines  # noqa: E402
from tracker.ops.bundled_redis import free_port  # noqa: E402

PROVIDERS = ("alpha", "beta", "gamma")
COUNT_QUERY = (
    "SELECT provider_id, final, status, count(*) FROM orders GROUP BY provider_id, final, status"
)


def seed(url: str, orders: int, active_share: float) -> float:
    """Orders spread over the providers; the first `active_share` of each ten thousand are
    active (a mix of statuses, all overdue by up to ten minutes), the rest final."""
    started = time.monotonic()
    active_per_10k = round(active_share * 10_000)
    with psycopg.connect(url, autocommit=True) as connection:
        for number, name in enumerate(PROVIDERS, 1):
            connection.execute(
                "INSERT INTO providers (id, name, api_url, api_key_encrypted, key_hint, batch_size, rate_limit,"
                " refill_days, paused, consecutive_failures, balance, balance_currency, balance_checked_at,"
                " created_at, updated_at, key_probe_failures)"
                " VALUES (%s, %s, 'https://panel.example/api/v2', 'not-a-real-token', '****0000', 100, 5, 30,"
                " false, 0, 1234.5, 'USD', now(), now(), now(), 0)",
                (number, name),
            )
        connection.execute(
            """
            INSERT INTO orders (provider_id, external_id, service_id, quantity, link, status, raw_status,
                                remains, charge, start_count, currency, final, last_observed_at,
                                next_poll_at, completed_at, created_at, updated_at, unchanged_polls,
                                consecutive_not_found, event_count)
            SELECT 1 + g %% 3, g, 1 + g %% 40, 1000, 'https://instagram.com/p/' || md5(g::text),
                   CASE WHEN g %% 10000 < %(active)s
                        THEN (ARRAY['In progress', 'Pending', 'Processing'])[1 + (g / 3) %% 3]
                        ELSE (ARRAY['Completed', 'Completed', 'Completed', 'Completed', 'Completed',
                                    'Completed', 'Completed', 'Partial', 'Canceled', 'Not found'])[1 + g %% 10]
                   END,
                   'Completed', g %% 1000, 1.234 + (g %% 100), 100 + g %% 5000, 'USD',
                   g %% 10000 >= %(active)s, now() - interval '1 hour',
                   now() - (g %% 600) * interval '1 second', now() - interval '1 hour',
                   now() - interval '2 days', now() - interval '1 hour', g %% 7, 0, 3
            FROM generate_series(1, %(orders)s) g
            """,
            {"orders": orders, "active": active_per_10k},
        )
        # Refills for 1% of the orders, refill requests for them, and a week of outbox events.
        connection.execute(
            """
            INSERT INTO refills (provider_id, order_id, external_id, status, raw_status, final, next_poll_at,
                                 requested_at, updated_at, unchanged_polls, consecutive_not_found, event_count)
            SELECT o.provider_id, o.id, 'r' || o.id,
                   (ARRAY['Completed', 'Completed', 'Rejected', 'In progress', 'Pending'])[1 + o.id % 5],
                   'Completed', o.id % 5 < 3, now() + interval '1 minute', now(), now(), 0, 0, 1
            FROM orders o WHERE o.id % 100 = 0
            """
        )
        connection.execute(
            """
            INSERT INTO refill_requests (provider_id, order_id, trigger, state, final, attempts,
                                         next_attempt_at, created_at, updated_at)
            SELECT o.provider_id, o.id, 'drop', (ARRAY['accepted', 'accepted', 'gave_up'])[1 + o.id % 3],
                   true, 1, NULL, now(), now()
            FROM orders o WHERE o.id % 100 = 0
            """
        )
        connection.execute(
            """
            INSERT INTO outbox_events (event_id, kind, provider_id, payload, created_at, final, next_attempt_at,
                                       attempts, delivered_at, failed_at)
            SELECT md5(g::text), 'order.status_changed', 1 + g %% 3, '{"order_id": ' || g || '}', now(),
                   g %% 1000 <> 0, now(), 1,
                   CASE WHEN g %% 1000 > 1 THEN now() END, CASE WHEN g %% 1000 = 1 THEN now() END
            FROM generate_series(1, %(events)s) g
            """,
            {"events": orders // 2},
        )
        connection.execute("VACUUM ANALYZE")
    return time.monotonic() - started


def explain(url: str) -> str:
    with psycopg.connect(url) as connection:
        rows = connection.execute("EXPLAIN (ANALYZE, COSTS OFF) " + COUNT_QUERY).fetchall()
    return "\n".join(f"    {row[0]}" for row in rows)


def statement_times(url: str) -> list[tuple[float, str]]:
    """Each SQL statement of one scrape, timed in this process (median of 5 runs)."""
    from sqlalchemy import event

    from tracker.core.clock import utcnow
    from tracker.config import get_settings
    from tracker.db.session import get_engine, unit_of_work
    from tracker.ops.exporter import read_snapshot

    runs: list[list[tuple[float, str]]] = []
    current: list[tuple[float, str]] = []
    started: list[float] = []

    def before(*_args: object) -> None:
        started.append(time.perf_counter())

    def after(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        current.append((time.perf_counter() - started.pop(), " ".join(statement.split())[:90]))

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    for _ in range(5):
        current = []
        with unit_of_work(url, read_only=True) as session:
            read_snapshot(session, get_settings(), utcnow())
        runs.append(current)
    return [
        (statistics.median(run[index][0] for run in runs), runs[0][index][1]) for index in range(len(runs[0]))
    ]


def scrape(url: str) -> tuple[float, str]:
    started = time.perf_counter()
    response = requests.get(url, timeout=30)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--active-share", type=float, default=0.1, help="share of the orders not final (0..1)")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument(
        "--without-index", action="store_true",
        help="drop ix_orders_status_counts first: what the per-status count costs without it",
    )
    args = parser.parse_args()
    if not redis_reachable(REDIS_BASE_URL):
        print(f"needs Redis at {REDIS_BASE_URL} (TRACKER_TEST_REDIS_URL)", file=sys.stderr)
        return 2
    database_url = create_postgres_database()
    redis_number = claim_database(REDIS_BASE_URL)
    env = {**os.environ, **deployment_settings(database_url, f"{REDIS_BASE_URL}/{redis_number}")}
    exporter: subprocess.Popen[bytes] | None = None
    try:
        os.environ.update(env)
        reset_settings()
        migrate.upgrade(database_url)
        seconds = seed(database_url, args.orders, args.active_share)
        if args.without_index:
            with psycopg.connect(database_url, autocommit=True) as connection:
                connection.execute("DROP INDEX ix_orders_status_counts")
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
        print(f"seeded {args.orders:,} orders ({args.active_share:.0%} active) in {seconds:.1f} s"
              + (", without ix_orders_status_counts" if args.without_index else ""))
        port = free_port()
        with tempfile.TemporaryFile() as log:
            exporter = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli.main", "exporter", "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 30
            while True:
                try:
                    first, text = scrape(metrics_url)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline or exporter.poll() is not None:
                        log.seek(0)
                        print(log.read().decode(), file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            times = [scrape(metrics_url)[0] for _ in range(args.scrapes)]
        orders_lines = [line for line in text.splitlines() if line.startswith("tracker_orders{")]
        print(f"first scrape (cold connection): {first * 1000:.1f} ms")
        print(
            f"one scrape of /metrics over HTTP, {args.scrapes} scrapes: median {statistics.median(times) * 1000:.1f} ms, "
            f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
        )
        print(f"{len(text.splitlines())} lines, {len(orders_lines)} tracker_orders series")
        print("SQL statements of one scrape (in-process, median of 5):")
        for seconds, statement in statement_times(database_url):
            print(f"  {seconds * 1000:6.1f} ms  {statement}")
        print(f"plan of the per-status count:\n{explain(database_url)}")
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=10)
        dispose_engines()
        drop_postgres_database(database_url)
        release_database(REDIS_BASE_URL, redis_number)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
