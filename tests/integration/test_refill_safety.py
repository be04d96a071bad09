"""No refill is ever sent twice, and cool-downs end: black-box scenarios with real parts.

Each test runs a real Celery worker and beat against the simulated provider over HTTP,
with the shop reporting drops through its own Celery client (``tracker.report_drop``) and
the CLI, on SQLite and PostgreSQL. What counts is what the sim saw: how many refills it
created for each order.

- a 429 on the first ``refill`` call, with 10 requests waiting: all 10 go out soon after
  Retry-After, none twice;
- the same drop reported 2 and 5 times, by task and CLI, at once, seconds apart and
  while its refill runs, with a cool-down of seconds: one refill per order, even after
  the cool-down; a drop reported after the refill completed: one more, at the
  cool-down's end;
- the provider creates the refill and its answer is lost (connection cut, read timeout),
  and the first refill completes before any retry could go out: one refill per order,
  and the request is shown as sent with its answer unknown.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.integration.helpers import add_provider, print_figures, running_tracker, shop_client
from tests.support.cluster import Cluster
from tests.support.deployment import applied_settings
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.db.models import Order, Provider, Refill, RefillAttempt, RefillRequest, Service
from tracker.db.session import unit_of_work
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL as REFILL
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

LONG_AGO = 10_000.0  # sim seconds: orders seeded this old are final at once
SPEED = 10.0  # sim seconds per real second: a refill runs 1 s from request to Completed


@contextmanager
def panel(refill_pending_s: float = 5.0, refill_progress_s: float = 5.0) -> Iterator[SimServer]:
    with SimServer(
        dialect="standard", speed=SPEED, seed=77, natural_drops=False,
        refill_too_early_s=0.0, refill_pending_s=refill_pending_s, refill_progress_s=refill_progress_s,
    ) as sim:
        yield sim


def refills_per_order(sim: SimServer) -> Counter[int]:
    """How many refills the sim created for each order: the ground truth."""
    created = sim.stats()["refills"]
    truth = sim.refill_truth(range(1, created + 1))
    return Counter(int(entry["order"]) for entry in truth.values() if entry is not None)


def tracked_refill_status(order_id: int) -> str | None:
    with unit_of_work() as session:
        return session.scalar(
            select(Refill.status).join(Order, Order.id == Refill.order_id).where(Order.external_id == order_id)
        )


def refill_calls(sim: SimServer) -> int:
    return int(sim.stats()["actions"].get("refill", {}).get("calls", 0))


def count_services() -> int:
    with unit_of_work() as session:
        return int(session.scalar(select(func.count()).select_from(Service)) or 0)


def statuses(ids: Sequence[int]) -> list[str | None]:
    with unit_of_work() as session:
        return list(session.scalars(select(Order.status).where(Order.external_id.in_(ids))))


def open_requests() -> int:
    with unit_of_work() as session:
        return int(
            session.scalar(select(func.count()).select_from(RefillRequest).where(RefillRequest.final.is_(False)))
            or 0
        )


def order_json(order_id: int, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert tracker_cli(["order", "panel", str(order_id), "--json"]) == 0
    view: dict[str, Any] = json.loads(capsys.readouterr().out)
    return view


def start(
    sim: SimServer, env: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch, orders: int
) -> tuple[list[int], Any]:
    """Register the panel, seed ``orders`` completed orders of a refill service, and have the
    worker sync the catalog and poll them to Completed."""
    add_provider("panel", sim.url, monkeypatch, "--rate-limit", "20")
    ids = sim.seed_orders(count=orders, service=REFILL, outcome="Completed", age_s=LONG_AGO)
    shop = shop_client(broker_url)
    shop.send_task("tracker.sync_catalogs")
    wait_until(lambda: count_services() > 0, timeout=30, what="catalog synced")
    shop.send_task("tracker.track_orders", args=["panel", ids], kwargs={"service": REFILL})
    wait_until(lambda: statuses(ids).count("Completed") == orders, timeout=30, what="orders Completed")
    for order_id in ids:
        sim.drop(order_id, 5)
    return ids, shop


def test_a_429_on_the_first_refill_delays_every_waiting_refill_only_by_its_retry_after(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry_after = 2.0
    with panel() as sim, running_tracker(tracker_env, tmp_path / "logs"):
        ids, shop = start(sim, tracker_env, broker_url, monkeypatch, orders=10)
        sim.inject_fault("rate_limit", count=1, actions=["refill"], seconds=retry_after)
        started = time.monotonic()
        for order_id in ids:
            shop.send_task("tracker.report_drop", args=["panel", order_id])
        wait_until(lambda: sim.stats()["refills"] >= 10, timeout=60, what="10 refills created")
        elapsed = time.monotonic() - started
        # Nothing more goes out afterwards: every request has ended.
        wait_until(lambda: open_requests() == 0, timeout=30, what="every request ended")
        per_order = refills_per_order(sim)
        calls = refill_calls(sim)
        max_in_1s = sim.stats()["all"]["max_calls_in_any_1s_window"]
    assert per_order == Counter({order_id: 1 for order_id in ids})
    assert calls == 11, "the 429 and one call per order"
    assert max_in_1s <= 20, "every kind together stays within the provider's rate"
    print_figures(
        f"429 on the first refill {tracker_env['TRACKER_DATABASE_URL'].split(':')[0]}",
        {"retry_after_s": retry_after, "tick_s": tracker_env["TRACKER_TICK_INTERVAL"],
         "seconds_until_all_10_sent": round(elapsed, 1), "refill_calls": calls, "max_calls_in_any_1s": max_in_1s},
    )


# A cool-down short enough to pass within the test: 10.8 s.
COOLDOWN_HOURS = 0.003
COOLDOWN_S = COOLDOWN_HOURS * 3600


def refill_attempt_times(order_id: int) -> list[datetime]:
    """When the tracker sent each refill of this order that the provider accepted."""
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(RefillAttempt.at)
                .join(RefillRequest, RefillRequest.id == RefillAttempt.request_id)
                .join(Order, Order.id == RefillRequest.order_id)
                .where(Order.external_id == order_id, RefillAttempt.outcome == "accepted")
                .order_by(RefillAttempt.at)
            )
        )


@pytest.mark.slow  # about 27 s here (each database)
def test_the_same_drop_reported_again_and_again_gets_one_refill_even_after_the_cooldown(
    tracker_env: dict[str, str],
    broker_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A refill runs 4 s at the sim (2 s Pending, 2 s In progress), well inside the cool-down.
    with (
        applied_settings({"TRACKER_REFILL_COOLDOWN_HOURS": str(COOLDOWN_HOURS)}, monkeypatch) as env,
        panel(refill_pending_s=20.0, refill_progress_s=20.0) as sim,
        running_tracker(env, tmp_path / "logs"),
    ):
        ids, shop = start(sim, env, broker_url, monkeypatch, orders=7)
        twice_at_once, five_at_once, mixed, cli_apart, twice_running, five_running, after_completion = ids

        def cli(order_id: int) -> None:
            tracker_cli(["report-drop", "panel", str(order_id)])

        def task(order_id: int) -> None:
            shop.send_task("tracker.report_drop", args=["panel", order_id])

        def at_once(*reports: tuple[Callable[[int], None], int]) -> None:
            threads = [threading.Thread(target=report, args=(order_id,)) for report, order_id in reports]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        # At once: shop tasks and CLI calls in parallel threads.
        at_once(
            *[(task, twice_at_once)] * 2, *[(task, five_at_once)] * 5,
            *[(report, mixed) for report in (task, cli, task, cli, task)],
            (task, twice_running), (task, five_running), (task, after_completion),
        )
        # Seconds apart, from the CLI.
        cli(cli_apart)
        time.sleep(2)  # on purpose: the two CLI reports seconds apart
        cli(cli_apart)
        # While the refill runs: the tracker has it accepted, the provider still working on it.
        for order_id in (twice_running, five_running):
            wait_until(
                lambda: tracked_refill_status(order_id) in ("Pending", "In progress"), timeout=30,
                what="the refill seen running by the tracker",
            )
        at_once((task, twice_running), *[(task, five_running)] * 4)
        # After the first refill completed (as the tracker saw it), it dropped again.
        wait_until(
            lambda: tracked_refill_status(after_completion) == "Completed", timeout=30,
            what="the first refill seen Completed by the tracker",
        )
        sim.drop(after_completion, 5)
        task(after_completion)
        cli(after_completion)
        # Every first refill went out before now: past every cool-down, and a few ticks more.
        time.sleep(COOLDOWN_S + 4)  # on purpose: time for a refill after the cool-down, if one were sent
        wait_until(lambda: refills_per_order(sim)[after_completion] >= 2, timeout=30, what="the second refill")
        per_order = refills_per_order(sim)
        calls = refill_calls(sim)
        sent = refill_attempt_times(after_completion)
        view = order_json(after_completion, capsys)
    assert per_order == Counter({**{order_id: 1 for order_id in ids}, after_completion: 2})
    assert calls == len(ids) + 1
    # The new drop waited for the cool-down's end, and went out then.
    [first, second] = sent
    waited = (second - first).total_seconds()
    assert waited >= COOLDOWN_S
    assert len(view["drops"]) == 3
    assert [request["state"] for request in view["refill_requests"]] == ["accepted", "accepted"]
    print_figures(
        f"one drop one refill {env['TRACKER_DATABASE_URL'].split(':')[0]}",
        {"cooldown_s": COOLDOWN_S, "orders": len(ids), "refills_at_sim": sum(per_order.values()),
         "refill_calls": calls, "second_refill_after_s": round(waited, 1)},
    )


@pytest.mark.parametrize("fault", ["act_then_drop", "act_then_hang"])
def test_a_refill_whose_answer_was_lost_is_never_sent_again(
    fault: str,
    tracker_env: dict[str, str],
    broker_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first refill completes 1 s after it was requested; a retry, were there one,
    # would come 2-4 s after the lost answer: when the provider gladly accepts another.
    env = {**tracker_env, "TRACKER_HTTP_READ_TIMEOUT": "2", "TRACKER_REFILL_RETRY_BASE": "4",
           "TRACKER_REFILL_RETRY_CAP": "8"}
    with panel() as sim, running_tracker(env, tmp_path / "logs"):
        [order_id], shop = start(sim, env, broker_url, monkeypatch, orders=1)
        sim.inject_fault(fault, count=1, actions=["refill"], seconds=5.0)
        shop.send_task("tracker.report_drop", args=["panel", order_id])
        wait_until(lambda: refill_calls(sim) >= 1, timeout=30, what="the refill call")
        wait_until(lambda: open_requests() == 0, timeout=30, what="the request ended")
        # Longer than any retry would have waited.
        time.sleep(10)
        calls = refill_calls(sim)
        per_order = refills_per_order(sim)
        view = order_json(order_id, capsys)
    assert calls == 1 and per_order == Counter({order_id: 1})
    [request] = view["refill_requests"]
    assert request["state"] == "gave_up" and request["answer"] == "unknown"
    assert [attempt["outcome"] for attempt in request["attempts"]] == ["no_answer"]
    assert "answer unknown" in request["last_message"]
    with unit_of_work() as session:
        assert session.scalar(select(Provider.paused)) is False


def test_every_call_kind_shares_one_budget_per_provider(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status polls, refills and refill-status polls of one provider together never go
    over its rate, measured by the provider."""
    rate = 4
    with panel() as sim, running_tracker(tracker_env, tmp_path / "logs"):
        ids, shop = start(sim, tracker_env, broker_url, monkeypatch, orders=12)
        with unit_of_work() as session:
            session.scalars(select(Provider)).one().rate_limit = rate
        # 400 active orders want 4 status calls per 1 s poll interval: the whole budget.
        busy = sim.seed_orders(count=400, service=REFILL, pending_s=10**6)
        shop.send_task("tracker.track_orders", args=["panel", busy], kwargs={"service": REFILL})
        sim.reset_stats()
        for order_id in ids:
            shop.send_task("tracker.report_drop", args=["panel", order_id])
        wait_until(lambda: sim.stats()["refills"] >= len(ids), timeout=60, what="every refill sent")
        time.sleep(5)  # on purpose: time for any extra call to show before counting
        stats = sim.stats()
    per_action = {action: counters["calls"] for action, counters in stats["actions"].items()}
    most_in_1s = stats["all"]["max_calls_in_any_1s_window"]
    assert per_action.get("status", 0) > 0 and per_action.get("refill", 0) == len(ids)
    assert most_in_1s <= rate
    print_figures(
        f"one budget per provider {tracker_env['TRACKER_DATABASE_URL'].split(':')[0]}",
        {"rate_limit": rate, "max_calls_in_any_1s_all_kinds": most_in_1s, **per_action},
    )


def test_a_worker_killed_while_its_refill_calls_are_out_sends_none_of_them_again(
    tracker_env: dict[str, str],
    broker_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kill -9 of a real worker between the calls and the writes of their answers."""
    env = {**tracker_env, "TRACKER_LEASE_SECONDS": "5"}
    monkeypatch.setenv("TRACKER_LEASE_SECONDS", "5")
    with panel() as sim, Cluster(env, tmp_path / "logs") as cluster:
        first = cluster.worker("worker-1")
        cluster.beat()
        ids, shop = start(sim, env, broker_url, monkeypatch, orders=3)
        sim.inject_fault("hold", count=3, actions=["refill"])
        for order_id in ids:
            shop.send_task("tracker.report_drop", args=["panel", order_id])
        wait_until(lambda: sim.stats()["held_now"] == 3, timeout=30, what="three refill calls held by the sim")
        first.kill9()
        # The provider acts now, and answers to sockets nobody reads any more.
        assert sim.release_held() == 3
        cluster.worker("worker-2")
        wait_until(lambda: open_requests() == 0, timeout=60, what="every request ended after kill -9")
        time.sleep(3)  # on purpose: time for a repeated call to show, if one were made
        per_order = refills_per_order(sim)
        calls = refill_calls(sim)
        views = [order_json(order_id, capsys) for order_id in ids]
    assert per_order == Counter({order_id: 1 for order_id in ids}) and calls == 3
    for view in views:
        [request] = view["refill_requests"]
        assert request["state"] == "gave_up" and request["answer"] == "unknown", request
