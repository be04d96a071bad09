"""One slow panel never delays another, nor the shop's tasks: real worker (the default
prefork pool), beat, Redis and two simulated providers over HTTP.

The slow panel here holds every status call until the test lets it go (longer than any
read timeout the test waits through), which is the worst a panel can do without its
circuit opening.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from tests.integration.helpers import add_provider, shop_client
from tests.support.cluster import Cluster
from tests.support.processes import Proc, wait_until
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.polling.engine import MAX_CALL_THREADS
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

# Three pool children: two poll slots and one kept for control tasks.
CONCURRENCY = 3


def provider_id(name: str) -> int:
    with unit_of_work() as session:
        return int(session.scalars(select(Provider.id).where(Provider.name == name)).one())


def polled(name: str, *, at_least: int = 1) -> int:
    """Orders of this provider whose history has at least ``at_least`` polls' worth of
    observations (the first poll records the first event; later ones move last_observed_at)."""
    with unit_of_work() as session:
        query = select(func.count()).select_from(Order).join(Provider).where(
            Provider.name == name, Order.last_observed_at.is_not(None)
        )
        if at_least > 1:
            query = query.where(Order.unchanged_polls >= at_least - 1)
        return int(session.scalar(query) or 0)


def dispatch_ticks(worker: Proc) -> int:
    return len(re.findall(r"tracker\.dispatch_polls\[[^\]]+\] succeeded", worker.output()))


def test_a_hanging_panel_holds_only_its_share_and_the_rest_goes_on(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker_env = {**tracker_env, "TRACKER_WORKER_CONCURRENCY": str(CONCURRENCY)}
    broker = redis.Redis.from_url(broker_url)
    with (
        SimServer(dialect="standard", seed=31) as slow,
        SimServer(dialect="standard", seed=32) as fast,
        Cluster(tracker_env, tmp_path / "logs") as cluster,
    ):
        add_provider("slow", slow.url, monkeypatch, "--rate-limit", "50")
        add_provider("fast", fast.url, monkeypatch, "--rate-limit", "50")
        slow_ids = slow.seed_orders(count=3000, service=1, pending_s=10**6)
        fast_ids = fast.seed_orders(count=600, service=1, pending_s=10**6)
        slow.inject_fault("hold", actions=["status"])
        worker = cluster.worker(concurrency=CONCURRENCY)
        cluster.beat()
        shop = shop_client(broker_url)
        # The fast provider has work (pending orders) before the slow one gets any.
        shop.send_task("tracker.track_orders", args=["fast", fast_ids[:300]])
        wait_until(lambda: polled("fast") == 300, timeout=30, what="the fast provider polled once")
        shop.send_task("tracker.track_orders", args=["slow", slow_ids])
        wait_until(lambda: slow.stats()["held_now"] > 0, timeout=30, what="the slow panel holding a call")
        slow_key = f"tracker:inflight:{provider_id('slow')}"

        # Several ticks while the slow panel holds its calls: it gets no more tasks than
        # its share (one of two poll slots, the other provider having work), so no new
        # call reaches it.
        wait_until(lambda: slow.stats()["held_now"] == MAX_CALL_THREADS, timeout=10, what="one task's calls held")
        ticks = dispatch_ticks(worker)
        most_in_flight = 0

        def ticked_three_times() -> bool:
            nonlocal most_in_flight
            most_in_flight = max(most_in_flight, int(broker.zcard(slow_key)))
            return dispatch_ticks(worker) >= ticks + 3

        wait_until(ticked_three_times, timeout=30, interval=0.1, what="three dispatcher ticks")
        assert most_in_flight == 1
        assert slow.stats()["held_now"] == MAX_CALL_THREADS

        # The other provider is polled again and again meanwhile (interval 1 s).
        wait_until(lambda: polled("fast", at_least=3) == 300, timeout=30, what="the fast provider polled 3 times")
        # The shop's task runs at once, and its orders are polled, while the call is held.
        shop.send_task("tracker.track_orders", args=["fast", fast_ids[300:]])
        wait_until(lambda: polled("fast") == 600, timeout=15, what="the shop's new orders polled")
        assert slow.stats()["held_now"] == MAX_CALL_THREADS, "the slow panel's calls were held throughout"

        slow.clear_faults()
        slow.release_held()
        wait_until(lambda: polled("slow") == 3000, timeout=90, what="the slow provider's orders, once it answers")
