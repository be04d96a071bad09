"""Building blocks shared by the integration tests."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select

from tests.conftest import TEST_API_KEY
from tests.support import processes
from tracker.cli.main import main as tracker_cli
from tracker.config import Settings, get_settings
from tracker.core.clock import utcnow
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.polling.dispatch import AttemptWork, PollWork, claim_all
from tracker.polling.engine import PollSummary, poll_batch
from tracker.polling.orders import ORDERS
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.sim.server import SimServer


def register_sim_orders(sim: SimServer, count: int, name: str = "panel", **seed: object) -> list[int]:
    """``count`` new sim orders (``seed``: the rest of ``SimServer.seed_orders``'s arguments),
    tracked by provider ``name``, registered for the sim; their IDs."""
    ids = sim.seed_orders(count=count, service=1, **seed)  # type: ignore[arg-type]
    with unit_of_work() as session:
        spec = ProviderSpec(name=name, url=sim.url, api_key=TEST_API_KEY, rate_limit=100)
        upsert_provider(session, spec, get_settings(), utcnow())
        track_orders(session, name, ids, now=utcnow())
    return ids


def cli_runner(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``run(*arguments)``: runs the tracker command in process; its exit code and what it
    printed (out, err), without what was printed before."""

    def run(*arguments: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = tracker_cli(list(arguments))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def add_provider(name: str, url: str, monkeypatch: pytest.MonkeyPatch, *extra: str) -> None:
    """Register a provider through the real CLI code path."""
    monkeypatch.setenv("TEST_PROVIDER_KEY", TEST_API_KEY)
    assert tracker_cli(["provider", "add", name, "--url", url, "--key-env", "TEST_PROVIDER_KEY", *extra]) == 0


def shop_client(broker_url: str) -> Celery:
    """What a shop runs: a bare Celery client that knows nothing of the tracker's code."""
    return Celery("shop", broker=broker_url)


@contextmanager
def running_tracker(env: dict[str, str], log_dir: Path, *, beat: bool = True) -> Iterator[dict[str, processes.Proc]]:
    procs: dict[str, processes.Proc] = {}
    try:
        procs["worker"] = processes.start_worker(env, log_dir)
        if beat:
            procs["beat"] = processes.start_beat(env, log_dir)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def count_orders(provider: str, *, final: bool | None = None) -> int:
    with unit_of_work() as session:
        query = select(func.count()).select_from(Order).join(Provider).where(Provider.name == provider)
        if final is not None:
            query = query.where(Order.final.is_(final))
        return int(session.scalar(query) or 0)


def status_calls_floor(active: int, batch: int = 100) -> int:
    return math.ceil(active / batch)


def same_money(left: Any, right: Any) -> bool:
    if left is None or right is None:
        return left is right
    return Decimal(str(left)) == Decimal(str(right))


def event_matches(event: dict[str, Any], entry: dict[str, Any]) -> bool:
    return (
        event["to_status"] == entry["status"]
        and event["remains"] == entry["remains"]
        and same_money(event["charge"], entry["charge"])
        and event["start_count"] == entry["start_count"]
    )


def check_history_against_truth(events: Sequence[dict[str, Any]], truth: dict[str, Any]) -> list[str]:
    """Problems with one order's recorded history, compared with the sim's timeline:
    every event is a state the order really went through, in order, recorded once."""
    problems: list[str] = []
    if not events:
        return ["no events"]
    if events[0]["from_status"] is not None:
        problems.append("first event has a from_status")
    for before, after in zip(events, events[1:], strict=False):
        if after["from_status"] != before["to_status"]:
            problems.append(f"event chain broken: {before['to_status']} then from {after['from_status']}")
        if all(before[key] == after[key] for key in ("to_status", "remains", "charge", "start_count")):
            problems.append(f"duplicate event {after}")
    timeline = truth["timeline"]
    position = 0
    for event in events:
        while position < len(timeline) and not event_matches(event, timeline[position]):
            position += 1
        if position == len(timeline):
            problems.append(f"event {event} is not in the sim's timeline (in order)")
            break
        position += 1
    last = events[-1]
    if not (
        last["to_status"] == truth["status"]
        and last["remains"] == truth["remains"]
        and same_money(last["charge"], truth["charge"])
        and last["start_count"] == truth["start_count"]
    ):
        problems.append(f"last event {last} differs from the final truth {truth['status']}/{truth['remains']}")
    return problems


def print_figures(title: str, figures: dict[str, Any]) -> None:
    """Figures go to stdout; `pytest -s` or the CI log shows them."""
    line = ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[figures] {title}: {line}", flush=True)
    figures_file = os.environ.get("TRACKER_FIGURES_FILE")
    if figures_file:
        with open(figures_file, "a") as handle:
            handle.write(f"{title}: {line}\n")


# --- driving the polling engine in process, one step at a time -------------------------------


def order_polls(settings: Settings, now: datetime) -> list[PollWork]:
    """The order polls one dispatcher tick claims (every other kind's work is claimed too)."""
    return [work for work in claim_all(settings, now) if isinstance(work, PollWork) and work.kind == ORDERS.name]


def refill_attempts(settings: Settings, now: datetime) -> list[AttemptWork]:
    """The refill attempts one dispatcher tick claims (every other kind's work is claimed too)."""
    return [work for work in claim_all(settings, now) if isinstance(work, AttemptWork)]


def poll_orders(
    provider_id: int, claim_id: int, row_ids: Sequence[int], *, settings: Settings, gateway: Gateway
) -> PollSummary:
    return poll_batch(ORDERS, provider_id, claim_id, row_ids, settings=settings, gateway=gateway)
