"""Order tracking end to end, with real parts only: a shop's Celery client enqueues order
IDs, beat ticks the dispatcher, a real worker polls the simulated providers over HTTP in
batches, and every transition lands in SQLite or PostgreSQL."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from tests.integration.helpers import (
    add_provider,
    check_history_against_truth,
    count_orders,
    print_figures,
    running_tracker,
    shop_client,
)
from tests.support.processes import wait_until
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.sim.server import SimServer
from tracker.orders.views import order_detail

pytestmark = pytest.mark.integration

ORDERS_PER_PROVIDER = 500
# Sim seconds per real second: the default plans (2-10 sim minutes) end in 3-15 s.
SPEED = 40.0


def histories(provider: str, external_ids: list[int]) -> dict[int, dict[str, object]]:
    with unit_of_work() as session:
        orders = session.scalars(
            select(Order).join(Provider).where(Provider.name == provider, Order.external_id.in_(external_ids))
        ).all()
        return {order.external_id: order_detail(session, order, provider) for order in orders}


@pytest.mark.slow  # about 20 s here (each database)
def test_orders_on_two_dialects_reach_their_true_final_state(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard", speed=SPEED, seed=11) as standard, SimServer(
        dialect="nocurrency", speed=SPEED, seed=12
    ) as nocurrency:
        add_provider("panel-standard", standard.url, monkeypatch, "--rate-limit", "50")
        add_provider("panel-nocurrency", nocurrency.url, monkeypatch, "--rate-limit", "50")
        ids_standard = standard.seed_orders(count=ORDERS_PER_PROVIDER, service=1)
        ids_nocurrency = nocurrency.seed_orders(count=ORDERS_PER_PROVIDER, service=1)

        with running_tracker(tracker_env, tmp_path / "logs"):
            shop = shop_client(broker_url)
            started = time.monotonic()
            # Numbers in one call, digit strings in another: both are what shops send.
            shop.send_task("tracker.track_orders", args=["panel-standard", ids_standard[:250]])
            shop.send_task("tracker.track_orders", args=["panel-standard", [str(i) for i in ids_standard[250:]]])
            shop.send_task("tracker.track_orders", args=["panel-nocurrency", ids_nocurrency], kwargs={"service": 1})
            # Enqueueing twice tracks once.
            shop.send_task("tracker.track_orders", args=["panel-nocurrency", ids_nocurrency[:100]])
            total = 2 * ORDERS_PER_PROVIDER
            wait_until(
                lambda: count_orders("panel-standard", final=True) + count_orders("panel-nocurrency", final=True) == total,
                timeout=150,
                what="every order to reach a final status",
            )
            elapsed = time.monotonic() - started

        assert count_orders("panel-standard") == ORDERS_PER_PROVIDER
        assert count_orders("panel-nocurrency") == ORDERS_PER_PROVIDER
        problems: dict[str, list[str]] = {}
        outcomes: dict[str, int] = {}
        for name, sim, ids in (
            ("panel-standard", standard, ids_standard),
            ("panel-nocurrency", nocurrency, ids_nocurrency),
        ):
            truth = sim.truth(ids)
            recorded = histories(name, ids)
            for order_id in ids:
                view = recorded[order_id]
                expected = truth[order_id]
                assert expected is not None
                outcomes[str(view["status"])] = outcomes.get(str(view["status"]), 0) + 1
                assert view["status"] == expected["status"], (name, order_id)
                assert view["remains"] == expected["remains"], (name, order_id)
                assert view["start_count"] == expected["start_count"], (name, order_id)
                assert str(view["charge"]) == str(expected["charge"]).rstrip("0").rstrip("."), (name, order_id)
                found = check_history_against_truth(view["events"], expected)  # type: ignore[arg-type]
                if found:
                    problems[f"{name}/{order_id}"] = found
            stats = sim.stats()["actions"]["status"]
            assert stats["max_ids"] <= 100
            assert stats["rejected_over_100"] == 0
            outcomes[f"{name} status calls"] = stats["calls"]
            outcomes[f"{name} ids/call"] = round(stats["ids_total"] / stats["calls"], 1)
        assert not problems, json.dumps(dict(list(problems.items())[:5]), indent=1, default=str)
        assert {"Completed", "Partial", "Canceled"} <= set(outcomes)
        print_figures(
            f"e2e {tracker_env['TRACKER_DATABASE_URL'].split(':')[0]}",
            {"orders": total, "seconds_to_all_final": round(elapsed, 1), **outcomes},
        )


def test_each_sweep_costs_ceil_active_over_100_status_calls(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = 1000
    with SimServer(dialect="standard", speed=1.0, seed=3) as sim:
        sim.set_config(track_per_id=True)
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "100")
        # Orders that stay Pending for the whole test: every sweep polls all of them.
        ids = sim.seed_orders(count=active, service=1, pending_s=10**6)
        shop = shop_client(broker_url)
        with running_tracker(tracker_env, tmp_path / "logs"):
            shop.send_task("tracker.track_orders", args=["panel", ids])
            wait_until(lambda: count_orders("panel") == active, timeout=30, what="orders registered")
            time.sleep(10)  # on purpose: the window the polls per order are counted in
        stats = sim.stats()
    polls = [stats["status_polls_per_order"].get(str(order_id), 0) for order_id in ids]
    calls = stats["actions"]["status"]["calls"]
    per_sweep = math.ceil(active / 100)
    assert min(polls) >= 3, "every order must have been polled in several sweeps"
    # Orders move in step: no order is polled more than once more than any other.
    assert max(polls) - min(polls) <= 1
    assert per_sweep * min(polls) <= calls <= per_sweep * max(polls)
    assert stats["actions"]["status"]["max_ids"] == 100
    print_figures(
        f"sweep {tracker_env['TRACKER_DATABASE_URL'].split(':')[0]}",
        {"active": active, "sweeps": f"{min(polls)}-{max(polls)}", "status_calls": calls, "ceil(active/100)": per_sweep,
         "calls_per_sweep": round(calls / (sum(polls) / len(polls)), 2)},
    )


@pytest.mark.slow  # about 33 s here (each database)
def test_a_flushed_broker_loses_no_order(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard", speed=20.0, seed=5) as sim:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=300, service=1)
        with running_tracker(tracker_env, tmp_path / "logs"):
            shop = shop_client(broker_url)
            shop.send_task("tracker.track_orders", args=["panel", ids])
            wait_until(lambda: count_orders("panel") == 300, timeout=30, what="orders registered")
            time.sleep(2)  # on purpose: work queued and in flight when the broker is flushed
            # Everything queued or in flight is gone, bindings included.
            redis.Redis.from_url(broker_url).flushdb()
            flushed_at = time.monotonic()
            wait_until(lambda: count_orders("panel", final=True) == 300, timeout=150, what="all final after a flush")
            recovery = time.monotonic() - flushed_at
        truth = sim.truth(ids)
        with unit_of_work() as session:
            statuses = dict(
                session.execute(select(Order.external_id, Order.status).where(Order.external_id.in_(ids))).all()
            )
    assert all(statuses[order_id] == truth[order_id]["status"] for order_id in ids)  # type: ignore[index]
    print_figures("redis flush", {"orders": 300, "seconds_from_flush_to_all_final": round(recovery, 1)})
