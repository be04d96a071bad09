"""A small shop's host: the plain ``celery -A tracker worker`` pinned to one core (and to
two), one provider with a large backlog registered first, and several small ones.

Every provider with due orders must be asked in turn: the small ones are each swept
within 30 s of the worker's start, while the big one keeps calling at its rate limit.
Real worker and beat, default intervals and leases, SQLite (a small shop's database),
Redis, and one ``SimServer`` per provider over HTTP.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import print_figures
from tests.support.cluster import Cluster
from tests.support.processes import wait_until
from tracker.config import get_settings, reset_settings
from tracker.core.clock import utcnow
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.orders.enqueue import track_orders
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.sim.server import SimServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # Pins the worker to cores: run alone, not beside other tests' workers.
    pytest.mark.serial,
    pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)"),
]

BIG_ORDERS = 50_000
SMALL_ORDERS = 100
RATE_LIMIT = 5.0
# The promise checked here: every small provider swept within this of the worker's start.
SWEPT_WITHIN_S = 30.0
# How long the big provider's calls are counted after the small ones are swept.
BIG_WINDOW_S = 15.0


def polled_per_provider() -> dict[str, int]:
    with unit_of_work(read_only=True) as session:
        rows = session.execute(
            select(Provider.name, func.count(Order.id))
            .join(Order, Order.provider_id == Provider.id)
            .where(Order.last_observed_at.is_not(None))
            .group_by(Provider.name)
        ).all()
    return {name: int(count) for name, count in rows}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("cores", "small_providers"), [("0", 7), ("0,1", 11)], ids=["1-core-8-providers", "2-cores-12-providers"])
def test_every_small_provider_is_swept_beside_a_big_backlog(
    tracker_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cores: str,
    small_providers: int,
) -> None:
    # Production pacing, not the tests' one-second intervals: a sweep is a real sweep.
    for name in ("TRACKER_POLL_INTERVAL", "TRACKER_TICK_INTERVAL", "TRACKER_MAX_POLL_BACKOFF", "TRACKER_LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
        tracker_env.pop(name, None)
    reset_settings()
    with Cluster(tracker_env, tmp_path / "logs") as cluster:
        sims = [cluster.enter_context(SimServer(dialect="standard", seed=50 + index)) for index in range(1 + small_providers)]
        names = ["big", *(f"small{index}" for index in range(1, small_providers + 1))]
        with unit_of_work() as session:
            # The big provider first: it has the lowest id, which used to win every tie.
            for name, sim in zip(names, sims):
                spec = ProviderSpec(name=name, url=sim.url, api_key=TEST_API_KEY, rate_limit=RATE_LIMIT)
                upsert_provider(session, spec, get_settings(), utcnow())
        for name, sim in zip(names, sims):
            ids = sim.seed_orders(count=BIG_ORDERS if name == "big" else SMALL_ORDERS, service=1, pending_s=10**6)
            with unit_of_work() as session:
                track_orders(session, name, ids, now=utcnow())

        # The plain command, pinned as a small VPS would run it: no pool flags, so its
        # pool and its poll slots follow the cores it may use.
        cluster.plain_worker(cpus=cores)
        started = time.monotonic()
        cluster.beat()

        swept_after: dict[str, float] = {}

        def small_ones_swept() -> bool:
            polled = polled_per_provider()
            for name in names[1:]:
                if name not in swept_after and polled.get(name, 0) == SMALL_ORDERS:
                    swept_after[name] = time.monotonic() - started
            return len(swept_after) == small_providers

        wait_until(small_ones_swept, timeout=SWEPT_WITHIN_S + 30, interval=0.2, what="every small provider swept")
        big_calls_before = sims[0].stats()["actions"].get("status", {}).get("calls", 0)
        window_started = time.monotonic()
        time.sleep(BIG_WINDOW_S)  # a window in which the big provider's calls are counted
        big_stats = sims[0].stats()["actions"]["status"]
        big_rate = (big_stats["calls"] - big_calls_before) / (time.monotonic() - window_started)

    print_figures(
        f"small host, cores {cores}, 1 big + {small_providers} small providers",
        {
            "small providers swept after (s), slowest": round(max(swept_after.values()), 1),
            "small providers swept after (s), each": sorted(round(value, 1) for value in swept_after.values()),
            "big provider's status calls/s meanwhile (limit 5)": round(big_rate, 2),
            "big provider's most calls in any 1 s": big_stats["max_calls_in_any_1s_window"],
        },
    )
    assert max(swept_after.values()) <= SWEPT_WITHIN_S, swept_after
    # Never over its rate limit, and not starved by the small ones' turns.
    assert big_stats["max_calls_in_any_1s_window"] <= RATE_LIMIT
    assert big_rate >= 0.8 * RATE_LIMIT, big_rate
