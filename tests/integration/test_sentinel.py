"""Redis behind Sentinel: a master, its replica and three Sentinels of the test's own
(tests/support/sentinel.py), failed over while the tracker runs on a ``sentinel://``
broker URL.

- The rate limit holds across a failover that lost the latest reservations: the
  replica missed them (stopped), the master died, the replica took over.
- A Celery worker, a shop's client, and the dispatcher's lock, in-flight counts and
  budgets all follow the master the Sentinels name.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import count_orders, shop_client
from tests.support.cluster import Cluster
from tests.support.deployment import applied_settings, settings_under_test
from tests.support import processes
from tracker.ops.bundled_redis import free_port
from tests.support.processes import wait_until
from tests.support.sentinel import MASTER_NAME, SentinelGroup
from tracker.apiv2.client import ProviderClient
from tracker.config import get_settings
from tracker.core.clock import utcnow
from tracker.db import migrate
from tracker.db.session import unit_of_work
from tracker import redis_clients
from tracker.polling.capacity import poll_token
from tracker.polling.dispatch import AttemptWork, PollWork
from tracker.polling.dispatch_runs import run_dispatcher
from tracker.providers.ratelimit import ARRIVAL_MARGIN, RateLimitBusy, RateLimiter
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.redis_clients import redis_client
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

RATE = 4.0
SPACING = (1 + ARRIVAL_MARGIN) / RATE
PROVIDER_ID = 1
# Callers that queue for slots on the master that is about to die, and callers that come
# after the failover: each group alone fills more than two seconds at RATE.
QUEUED_BEFORE = 10
CALLERS_AFTER = 10
PAUSE = 3.0


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path / "redis") as group:
        yield group


def _call_when_allowed(limiter: RateLimiter, client: ProviderClient, order_ids: list[int]) -> None:
    """One status call, as soon as the shared limit allows it; a master that is gone (and
    none promoted yet) is asked again shortly, as a poll task's next try would."""
    while True:
        try:
            limiter.acquire(PROVIDER_ID, RATE)
            break
        except RateLimitBusy as busy:
            time.sleep(min(busy.wait_seconds, 1.0))
        except redis.RedisError:
            time.sleep(0.05)
    client.status_multi(order_ids)


def test_the_rate_limit_holds_across_a_failover_that_lost_the_latest_reservations(
    sentinel_group: SentinelGroup,
) -> None:
    group = sentinel_group
    # Two limiters with their own connections: two worker processes.
    limiters = [
        RateLimiter(redis_client(group.url(), timeout=2), failover_pause=PAUSE),
        RateLimiter(redis_client(group.url(), timeout=2), failover_pause=PAUSE),
    ]
    master, replica = group.master_port(), group.replica_port()
    with SimServer(dialect="standard", api_key=TEST_API_KEY, seed=5) as sim:
        order_ids = sim.seed_orders(count=1, service=1)
        clients: list[ProviderClient] = []

        def caller(limiter: RateLimiter) -> threading.Thread:
            client = ProviderClient(sim.url, TEST_API_KEY)
            clients.append(client)
            thread = threading.Thread(target=_call_when_allowed, args=(limiter, client, order_ids))
            thread.start()
            return thread

        try:
            caller(limiters[0]).join()
            # The replica has everything so far, then stops following: it stands still, and
            # the master drops the link (what was already sent would still arrive).
            assert group.direct(master).wait(1, 2000) == 1
            group.pause(replica)
            group.direct(master).client_kill_filter(_type="replica")
            queued = [caller(limiters[index % 2]) for index in range(QUEUED_BEFORE)]
            wait_until(
                lambda: _reserved_ahead(group.direct(master)) > (QUEUED_BEFORE - 1) * SPACING,
                timeout=10, interval=0.02, what="the callers to reserve their slots",
            )
            # The master dies with those reservations; the replica, which never saw them,
            # takes over while the callers that reserved them are still waiting.
            group.kill(master)
            group.resume(replica)
            later = [caller(limiters[index % 2]) for index in range(CALLERS_AFTER)]
            assert group.wait_for_new_master(master) == replica
            for thread in queued + later:
                thread.join(timeout=60)
            assert not any(thread.is_alive() for thread in queued + later)
        finally:
            for client in clients:
                client.close()
        stats = sim.stats()["actions"]["status"]

    assert stats["calls"] == 1 + QUEUED_BEFORE + CALLERS_AFTER
    assert stats["max_calls_in_any_1s_window"] <= RATE, stats
    # The new master noticed it took over (the note of the old one's run_id it inherited).
    new_master = group.direct(replica)
    assert new_master.get("tracker:rate-server") == new_master.info("server")["run_id"].encode()
    assert new_master.exists("tracker:rate-resume")


def _reserved_ahead(master: redis.Redis) -> float:
    """How far ahead of the master's clock the provider's next free slot lies, in seconds."""
    seconds, microseconds = master.time()
    theoretical_arrival = int(master.get(f"tracker:rate:{PROVIDER_ID}") or 0)
    return (theoretical_arrival - (seconds * 1_000_000 + microseconds)) / 1e6


def test_a_worker_a_shop_and_the_dispatcher_follow_the_master_through_a_failover(
    sentinel_group: SentinelGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = sentinel_group
    database_url = f"sqlite:///{tmp_path / 'tracker.db'}"
    migrate.upgrade(database_url)
    # This process's coordination client is made afresh, on the Sentinel URL.
    monkeypatch.setattr(redis_clients, "_coordination", None)
    values = settings_under_test(database_url, group.url(), tmp_path / "state")
    with (
        applied_settings(values, monkeypatch) as env,
        SimServer(dialect="standard", api_key=TEST_API_KEY, seed=7) as sim,
        Cluster(env, tmp_path / "logs") as cluster,
    ):
        ids = sim.seed_orders(count=4, service=1)
        with unit_of_work() as session:
            spec = ProviderSpec(name="panel", url=sim.url, api_key=TEST_API_KEY, rate_limit=100)
            provider_id = upsert_provider(session, spec, get_settings(), utcnow())[0].id
        worker = cluster.worker(concurrency=2)
        # The worker's own dispatcher run at start (nothing to claim yet) is over before the
        # orders exist, so the run below is the one that claims them.
        wait_until(
            lambda: re.search(r"tracker\.dispatch_polls\[[^\]]+\] succeeded", worker.output()) is not None,
            timeout=30, what="the worker's dispatcher run at start",
        )
        shop = shop_client(group.url())
        shop.conf.broker_transport_options = {"master_name": MASTER_NAME}

        shop.send_task("tracker.track_orders", args=["panel", ids[:2]])
        wait_until(lambda: count_orders("panel") == 2, timeout=30, what="the first orders tracked")
        sent: list[AttemptWork | PollWork] = []
        assert run_dispatcher(get_settings(), sent.append) == 1

        old = group.master_port()
        new = group.failover()
        assert new != old
        new_master = group.direct(new)
        budget, in_flight, capacity = f"tracker:budget:{provider_id}", f"tracker:inflight:{provider_id}", "tracker:capacity"
        # What the old master had, gone: only what is written from now on counts.
        new_master.delete(budget, in_flight, capacity)

        # The shop's client, made before the failover, publishes to the new master; the
        # worker consumes from it.
        shop.send_task("tracker.track_orders", args=["panel", ids[2:]])
        wait_until(lambda: count_orders("panel") == 4, timeout=30, what="the orders sent after the failover")
        # The worker announces its poll slots to the new master.
        wait_until(lambda: new_master.exists(capacity), timeout=15, what="the worker's announcement")

        # The dispatcher's lock lives on the new master: held there, a run stands aside.
        new_master.set("tracker:lock:dispatch-polls", "held elsewhere", ex=30)
        assert run_dispatcher(get_settings(), sent.append) == 0
        assert new_master.exists("tracker:dispatch:again")
        new_master.delete("tracker:lock:dispatch-polls")
        # Released, it claims the new orders and counts them in flight and against the
        # budget, on the new master.
        assert run_dispatcher(get_settings(), sent.append) == 1
        latest = sent[-1]
        assert isinstance(latest, PollWork)
        assert new_master.zscore(in_flight, poll_token("orders", latest.claim.claim_id)) is not None
        assert new_master.exists(budget)
        assert worker.alive(), worker.output()
        shop.close()


def test_tracker_run_on_a_sentinel_broker_finds_its_workers_at_once(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    """`tracker run` pings its workers before it starts Flower and says it runs. The ping
    goes through Sentinel too: without the master's name it reached no worker, and the
    run waited out its whole minute (WORKERS_READY_SECONDS) before it went on."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("TRACKER_", "FLOWER_"))}
    env.update(settings_under_test(f"sqlite:///{tmp_path / 'tracker.db'}", sentinel_group.url(), tmp_path / "state"))
    run = processes.start(
        "run", [sys.executable, "-m", "tracker.cli.main", "run", "--flower-port", str(free_port())], env, tmp_path
    )
    try:
        wait_until(
            lambda: "tracker running:" in run.output() or not run.alive(), timeout=40,
            what="`tracker run` saying it runs",
        )
        assert run.alive(), run.output()[-3000:]
    finally:
        run.process.send_signal(signal.SIGINT)
        try:
            run.process.wait(timeout=60)
        finally:
            run.stop()
    assert run.process.returncode == 0, run.output()[-3000:]
