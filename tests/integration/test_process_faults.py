"""Process and infrastructure faults, with real parts only: Celery worker and beat
processes, Redis, SQLite, PostgreSQL or MariaDB, and the simulated provider over HTTP.

In each case every order must end at its true final status (compared with the sim's
truth, history included), and the stored history must hold no transition twice: per
order, ``seq`` is exactly 1..n, no two consecutive events are identical, and the order
row's ``event_count`` matches its events.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from tests.integration.helpers import add_provider, count_orders, print_figures, shop_client
from tests.support.databases import SERVER_DATABASES
from tests.support.cluster import Cluster
from tests.support.integrity import event_problems, first_problems, truth_problems
from tests.support.observe import BackendKiller, SimCallLog, gaps
from tests.support.processes import wait_until
from tracker.config import reset_settings
from tracker.db.models import Order, OrderEvent
from tracker.db.session import unit_of_work
from tracker.core.scheduling import JITTER
from tracker.ops.bundled_redis import BundledRedis
from tracker.sim.server import SimServer
from tracker.polling.dispatch import FILL_HORIZON_SHARE

pytestmark = pytest.mark.integration

# The shortest lease the settings accept (tracker_env's is 10 s).
SHORT_LEASE = 5.0

server_databases = pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)


def assert_nothing_lost_or_doubled(provider: str, sim: SimServer, ids: list[int]) -> None:
    assert count_orders(provider) == len(ids)
    doubled = event_problems(provider)
    assert not doubled, first_problems(doubled)
    wrong = truth_problems(provider, sim, ids)
    assert not wrong, first_problems(wrong)


def db_kind(env: dict[str, str]) -> str:
    return env["TRACKER_DATABASE_URL"].split(":")[0].split("+")[0]


def short_lease(tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The shortest lease the settings allow, so lost work comes back sooner."""
    monkeypatch.setenv("TRACKER_LEASE_SECONDS", str(SHORT_LEASE))
    reset_settings()
    return {**tracker_env, "TRACKER_LEASE_SECONDS": str(SHORT_LEASE)}


def test_a_worker_killed_mid_batch_loses_nothing(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = short_lease(tracker_env, monkeypatch)
    with SimServer(dialect="standard", speed=1.0, seed=21) as sim, Cluster(env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        # 100 orders: one batch, so the held call is the whole batch.
        ids = sim.seed_orders(count=100, service=1, pending_s=1.0, progress_s=11.0)
        sim.inject_fault("hold", count=1, actions=["status"])
        first = cluster.worker("worker-1")
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
        wait_until(lambda: sim.stats()["held_now"] > 0, timeout=30, what="a status call held by the sim")
        with unit_of_work() as session:
            held = session.execute(select(Order.claim_id, Order.next_poll_at).where(Order.claim_id.is_not(None))).all()
        assert len(held) == 100 and len({row.claim_id for row in held}) == 1, "one claimed batch in flight"
        lease_end = max(row.next_poll_at for row in held)
        first.kill9()
        killed_at = time.monotonic()
        # The provider answers now, to a socket nobody reads any more.
        assert sim.release_held() == 1
        cluster.worker("worker-2")
        wait_until(lambda: count_orders("panel", final=True) == 100, timeout=60, what="every order final after kill -9")
        recovery = time.monotonic() - killed_at
        with unit_of_work() as session:
            first_event_at = session.scalar(select(func.min(OrderEvent.at)))
        assert first_event_at is not None
        # The held answer was never applied; the batch was redone once its lease ran out.
        assert first_event_at >= lease_end - timedelta(seconds=0.5), (first_event_at, lease_end)
        assert_nothing_lost_or_doubled("panel", sim, ids)
        status_calls = sim.stats()["actions"]["status"]["calls"]
    print_figures(
        f"kill -9 {db_kind(tracker_env)}",
        {"orders": 100, "lease_s": SHORT_LEASE, "seconds_kill_to_all_final": round(recovery, 1), "status_calls": status_calls},
    )


def test_two_beats_never_poll_an_order_twice_in_one_interval(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = float(tracker_env["TRACKER_POLL_INTERVAL"])
    # The shortest legitimate gap between two polls of one order: one interval less the
    # jitter, less the share by which a batch may poll early to fill itself up.
    shortest = interval * (1 - JITTER) - interval * FILL_HORIZON_SHARE
    window = 6.0
    active = 300
    with SimServer(dialect="standard", speed=1.0, seed=22) as sim, Cluster(tracker_env, tmp_path / "logs") as cluster:
        calls = SimCallLog(sim)
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "100")
        ids = sim.seed_orders(count=active, service=1, pending_s=10**6)
        cluster.worker()
        beats = [cluster.beat("beat-1"), cluster.beat("beat-2")]
        shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
        wait_until(lambda: count_orders("panel") == active, timeout=30, what="orders registered")
        # On purpose: a second for both beats to be ticking before the counted window opens.
        time.sleep(1)
        ticks_before = [beat.output().count("tracker.dispatch_polls") for beat in beats]
        since = time.monotonic()
        time.sleep(window)  # on purpose: the window the ticks and polls are counted in
        ticks = [beat.output().count("tracker.dispatch_polls") - before for beat, before in zip(beats, ticks_before, strict=True)]
        polled = calls.polls_since(since)
    # Both beats really ticked all along: the test is not one beat in disguise.
    assert min(ticks) >= window - 2, ticks
    polls = [len(polled.get(order_id, [])) for order_id in ids]
    assert min(polls) >= 2, "every order must have been polled during the window"
    closest = min((gap, order_id) for order_id in ids for gap in gaps(polled[order_id]))
    assert closest[0] >= shortest - 0.05, f"order {closest[1]} polled twice {closest[0]:.2f}s apart"
    # One beat's expectation: at most about window / interval polls per order, never ~2x.
    assert max(polls) <= window / shortest + 1, max(polls)
    print_figures(
        f"two beats {db_kind(tracker_env)}",
        {"orders": active, "window_s": window, "ticks_per_beat": ticks, "polls_per_order": f"{min(polls)}-{max(polls)}",
         "closest_polls_s": round(closest[0], 2), "shortest_allowed_s": round(shortest, 2)},
    )


# The broker does not care which database the leases live in; the bundled Redis belongs
# to the embedded (SQLite) setup, so that is the one run here.
@pytest.mark.slow  # about 20 s here
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_redis_restarted_then_flushed_mid_run_loses_nothing(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = BundledRedis(tmp_path / "own-redis")
    broker.start()
    env = {**short_lease(tracker_env, monkeypatch), "TRACKER_BROKER_URL": broker.url}
    monkeypatch.setenv("TRACKER_BROKER_URL", broker.url)
    reset_settings()
    binding = "_kombu.binding.celery"
    client = redis.Redis.from_url(broker.url)
    try:
        with SimServer(dialect="standard", speed=1.0, seed=23) as sim, Cluster(env, tmp_path / "logs") as cluster:
            add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
            ids = sim.seed_orders(count=200, service=1, pending_s=2.0, progress_s=16.0)
            canaries = sim.seed_orders(count=2, service=1, pending_s=1.0, progress_s=3.0)
            cluster.worker()
            cluster.beat()
            shop = shop_client(broker.url)
            shop.send_task("tracker.track_orders", args=["panel", ids])
            wait_until(lambda: count_orders("panel") == 200, timeout=30, what="orders registered")
            time.sleep(1)  # on purpose: polls under way when the broker goes

            broker.stop()
            time.sleep(1.5)  # on purpose: the broker's outage
            broker.start()
            restarted = time.monotonic()
            # Nothing survived the restart; the worker declares its queue again by itself.
            wait_until(lambda: bool(client.exists(binding)), timeout=30, what="queue binding re-declared")
            shop = shop_client(broker.url)
            shop.send_task("tracker.track_orders", args=["panel", [canaries[0]]])
            wait_until(lambda: count_orders("panel") == 201, timeout=30, what="canary consumed after the restart")
            after_restart = time.monotonic() - restarted

            client.flushdb()
            flushed = time.monotonic()
            wait_until(lambda: bool(client.exists(binding)), timeout=30, what="queue binding re-declared")
            shop.send_task("tracker.track_orders", args=["panel", [canaries[1]]])
            wait_until(lambda: count_orders("panel") == 202, timeout=30, what="canary consumed after the flush")
            after_flush = time.monotonic() - flushed

            everything = ids + canaries
            wait_until(lambda: count_orders("panel", final=True) == 202, timeout=90, what="every order final")
            assert_nothing_lost_or_doubled("panel", sim, everything)
    finally:
        client.close()
        broker.stop()
    print_figures(
        f"redis restart+flush {db_kind(tracker_env)}",
        {"orders": 202, "canary_after_restart_s": round(after_restart, 1), "canary_after_flush_s": round(after_flush, 1)},
    )


@server_databases
def test_database_connections_killed_mid_transaction_half_write_nothing(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard", speed=1.0, seed=24) as sim, Cluster(tracker_env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=300, service=1, pending_s=1.0, progress_s=10.0)
        worker = cluster.worker()
        cluster.beat()
        shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
        wait_until(lambda: count_orders("panel") == 300, timeout=30, what="orders registered")
        with BackendKiller(tracker_env["TRACKER_DATABASE_URL"], period=0.05) as killer:
            # Kill until a kill has hit a transaction (a task retried), for 5 s at least.
            time.sleep(5)
            wait_until(
                lambda: worker.output().count("Retry in") > 0, timeout=40,
                what="a task retried: a kill that hit a transaction",
            )
        wait_until(lambda: count_orders("panel", final=True) == 300, timeout=90, what="every order final")
        assert killer.terminated > 0, "the killer never hit a connection"
        retries = worker.output().count("Retry in")
        assert_nothing_lost_or_doubled("panel", sim, ids)
    print_figures(
        f"database connections killed {db_kind(tracker_env)}",
        {"orders": 300, "connections_terminated": killer.terminated, "task_retries": retries},
    )


@pytest.mark.parametrize("database_url", [SERVER_DATABASES[0]], indirect=True)
def test_orders_a_shop_sends_while_the_database_is_down_are_tracked_once_it_is_back(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shop's message is the only copy of the order IDs it hands over. While the database
    refuses connections (here for 45 s: a restart, an upgrade, a failover), the task is
    retried until it is back. It used to give up after five tries, about half a minute with
    Celery's backoff and jitter, and the orders were never tracked."""
    import psycopg
    from psycopg import sql

    from tests.support.databases import POSTGRES_ADMIN_URL

    database = tracker_env["TRACKER_DATABASE_URL"].rpartition("/")[2]

    def allow_connections(allowed: bool) -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(database), sql.Literal(allowed)
                )
            )
            if not allowed:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
                )

    with SimServer(dialect="standard", speed=1.0, seed=31) as sim, Cluster(tracker_env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch)
        ids = sim.seed_orders(count=20, service=1)
        worker = cluster.worker(concurrency=2)
        allow_connections(False)
        try:
            shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids])
            time.sleep(45)
            retries = worker.output().count("Retry in")
            assert retries >= 2, worker.output()[-3000:]
        finally:
            allow_connections(True)
        wait_until(lambda: count_orders("panel") == 20, timeout=90, what="the orders tracked once the database is back")
    print_figures("database down 45 s", {"orders": 20, "task_retries_while_down": retries})
