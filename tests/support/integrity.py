"""What the fault tests check after the dust settles: every order at its true final
status, and a history with nothing written twice and nothing half-written.

The checks read the database directly (rows as stored, not the CLI's views), so a bug in
a read model cannot hide a bug in what was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import select

from tests.integration.helpers import check_history_against_truth
from tracker.db.models import Order, OrderEvent, Provider
from tracker.db.session import unit_of_work
from tracker.orders.views import order_detail

_EVENT_FIELDS = ("to_status", "raw_status", "remains", "charge", "start_count")


class Truthful(Protocol):
    """A sim (in process or over HTTP) that reports the truth about its orders."""

    def truth(self, ids: Iterable[int]) -> dict[int, dict[str, Any] | None]: ...


def event_problems(provider: str) -> dict[int, list[str]]:
    """Problems in the stored history of each of the provider's orders, by order ID:
    ``seq`` not exactly 1..n, two consecutive identical events, or an ``event_count``
    on the order row that differs from the number of its events (half-written)."""
    problems: dict[int, list[str]] = {}
    with unit_of_work() as session:
        orders = {
            row.id: (row.external_id, row.event_count)
            for row in session.execute(
                select(Order.id, Order.external_id, Order.event_count)
                .join(Provider)
                .where(Provider.name == provider)
            )
        }
        events: dict[int, list[Any]] = {row_id: [] for row_id in orders}
        for event in session.execute(
            select(OrderEvent.order_id, OrderEvent.seq, *(getattr(OrderEvent, f) for f in _EVENT_FIELDS))
            .where(OrderEvent.order_id.in_(list(orders)))
            .order_by(OrderEvent.order_id, OrderEvent.seq)
        ):
            events[event.order_id].append(event)
    for row_id, (external_id, event_count) in orders.items():
        found: list[str] = []
        history = events[row_id]
        seqs = [event.seq for event in history]
        if seqs != list(range(1, len(history) + 1)):
            found.append(f"seq is {seqs}, not 1..{len(history)}")
        if event_count != len(history):
            found.append(f"orders.event_count={event_count} but {len(history)} events stored")
        for before, after in zip(history, history[1:], strict=False):
            if all(getattr(before, f) == getattr(after, f) for f in _EVENT_FIELDS):
                found.append(f"events {before.seq} and {after.seq} are identical")
        if found:
            problems[external_id] = found
    return problems


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def truth_problems(provider: str, sim: Truthful, ids: Sequence[int]) -> dict[int, list[str]]:
    """Orders whose stored final state or history differs from the sim's truth."""
    truth = sim.truth(ids)
    problems: dict[int, list[str]] = {}
    with unit_of_work() as session:
        rows = {
            order.external_id: order_detail(session, order, provider)
            for order in session.scalars(
                select(Order).join(Provider).where(Provider.name == provider, Order.external_id.in_(list(ids)))
            )
        }
    for order_id in ids:
        view = rows.get(order_id)
        expected = truth.get(order_id)
        if view is None or expected is None:
            problems[order_id] = ["not tracked" if view is None else "unknown to the sim"]
            continue
        found: list[str] = []
        if not view["final"] or not expected["final"]:
            found.append(f"not final: tracker final={view['final']}, sim final={expected['final']}")
        for field in ("status", "remains", "start_count"):
            if view[field] != expected[field]:
                found.append(f"{field}: tracker {view[field]!r}, sim {expected[field]!r}")
        if _money(view["charge"]) != _money(expected["charge"]):
            found.append(f"charge: tracker {view['charge']!r}, sim {expected['charge']!r}")
        found.extend(check_history_against_truth(view["events"], expected))
        if found:
            problems[order_id] = found
    return problems


def first_problems(problems: dict[int, list[str]], limit: int = 5) -> str:
    """A short rendering for assertion messages."""
    shown = list(problems.items())[:limit]
    return f"{len(problems)} orders with problems, e.g. " + "; ".join(f"{key}: {value}" for key, value in shown)
