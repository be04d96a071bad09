"""Two hosts whose clocks are a minute apart: real Celery workers sharing one Redis and one
PostgreSQL database, one of them (with beat) under Debian's faketime, 60 s ahead.

Worker ``a`` keeps the real time and runs the polls (it announces its poll slots);
worker ``b``, 60 s ahead, takes only control tasks (the dispatcher, the outbox), so it
announces none. Orders move on the sim; the shop's webhook endpoint counts deliveries.
Every time shared between the hosts must be the database's or Redis': with ``b``'s own
clock, it took every announcement for lapsed (and so capped nothing) and every delivery
lease ``a`` held for ended (and so delivered its events again).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from tests.integration.helpers import add_provider, print_figures
from tests.support.cluster import Cluster
from tests.support.processes import wait_until
from tests.support.shop_endpoint import ShopEndpoint
from tests.support.skewed_clock import require_faketime
from tracker.config import reset_settings
from tracker.db.clock import database_now
from tracker.db.models import Order, OutboxEvent, Provider
from tracker.db.session import unit_of_work
from tracker.orders.enqueue import track_orders
from tracker.polling.capacity import poll_slots_of
from tracker.sim.server import SimServer

# Two hosts and beat at once: alone, after the parallel part of ./scripts/test.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.serial]

AHEAD_SECONDS = 60
POLL_WORKER_CONCURRENCY = 3
ORDERS = 80


class InFlightSampler(threading.Thread):
    """The most provider tasks queued or running at once, read from the dispatcher's own
    count in Redis every few milliseconds."""

    def __init__(self, broker_url: str, provider_id: int) -> None:
        super().__init__(daemon=True)
        self._redis = redis.Redis.from_url(broker_url)
        self._key = f"tracker:inflight:{provider_id}"
        self._done = threading.Event()
        self.most = 0

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.most = max(self.most, int(self._redis.zcard(self._key)))

    def stop(self) -> None:
        self._done.set()
        self.join()
        self._redis.close()


def unfinished() -> tuple[int, int]:
    """Orders not final, events not delivered."""
    with unit_of_work(read_only=True) as session:
        orders = session.scalar(select(func.count()).select_from(Order).where(Order.final.is_(False)))
        events = session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.final.is_(False)))
        return int(orders or 0), int(events or 0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_hosts_a_minute_apart_deliver_each_event_once_within_the_slot_cap(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_faketime()
    with ShopEndpoint(delay_s=0.08) as shop, SimServer(dialect="standard", speed=30.0, seed=60) as sim:
        # One call per task, ten orders per call: many small tasks, so a dispatcher that
        # lost the cap would hand out far more than the poll slots.
        settings = {
            "TRACKER_WEBHOOK_URL": shop.url,
            "TRACKER_WEBHOOK_SECRET": "whsec-skewed-clocks",
            "TRACKER_CALLS_PER_TASK": "1",
        }
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        env = {**tracker_env, **settings}
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50", "--batch-size", "10")
        ids = sim.seed_orders(count=ORDERS, service=1)
        with unit_of_work() as session:
            provider_id = int(session.scalar(select(Provider.id)) or 0)
            track_orders(session, "panel", ids, now=database_now(session))
        slots = poll_slots_of(POLL_WORKER_CONCURRENCY)
        sampler = InFlightSampler(broker_url, provider_id)
        sampler.start()
        try:
            with Cluster(env, tmp_path / "logs") as cluster:
                cluster.worker("a", concurrency=POLL_WORKER_CONCURRENCY)
                cluster.worker("b", concurrency=2, queues="celery", clock_offset=AHEAD_SECONDS)
                cluster.beat(clock_offset=AHEAD_SECONDS)
                wait_until(lambda: unfinished() == (0, 0), timeout=90, what="every order final, every event delivered")
        finally:
            sampler.stop()
        posts = Counter(post.event_id for post in shop.posts)
    with unit_of_work(read_only=True) as session:
        events = set(session.scalars(select(OutboxEvent.event_id)))
    twice = sorted(event_id for event_id, count in posts.items() if count > 1)
    print_figures(
        "skewed clocks",
        {
            "orders": ORDERS,
            "events": len(events),
            "posts": sum(posts.values()),
            "events_posted_twice_or_more": len(twice),
            "poll_slots": slots,
            "most_tasks_in_flight": sampler.most,
        },
    )
    assert set(posts) == events
    assert not twice, f"{len(twice)} of {len(events)} events delivered more than once"
    assert 1 <= sampler.most <= slots, f"{sampler.most} provider tasks in flight, {slots} poll slots announced"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_ahead_of_beat_still_runs_its_ticks(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat stamps each tick's message with an expiry on its own clock, and a worker reads
    it on its own: a worker 90 s ahead took every tick for expired and dropped it, so
    nothing it did not start itself was ever dispatched, and no event was ever delivered."""
    require_faketime()
    with ShopEndpoint() as shop, SimServer(dialect="standard", speed=30.0, seed=61) as sim:
        settings = {"TRACKER_WEBHOOK_URL": shop.url, "TRACKER_WEBHOOK_SECRET": "whsec-skewed-ticks"}
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        env = {**tracker_env, **settings}
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=10, service=1)
        with Cluster(env, tmp_path / "logs") as cluster:
            worker = cluster.worker("ahead", concurrency=2, clock_offset=90)
            # The worker's own dispatcher run at start is over before there is anything to
            # poll: from here on only beat's ticks can start the work.
            wait_until(lambda: "dispatch_polls[" in worker.output(), timeout=30, what="the worker's run at start")
            with unit_of_work() as session:
                track_orders(session, "panel", ids, now=database_now(session))
            cluster.beat()
            wait_until(lambda: unfinished() == (0, 0), timeout=60, what="every order final, every event delivered")
    assert shop.posts, "events delivered"
