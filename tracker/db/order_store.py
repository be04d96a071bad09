"""Bulk reads and writes of order state for the poll path.

The hot path uses Core statements, not ORM objects: one SELECT of the claimed rows, one
executemany UPDATE of every polled row, one multi-row INSERT of the new events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, false, insert, select, update
from sqlalchemy.orm import Session

from tracker.db.models import Order, OrderEvent
from tracker.domain.status import OrderStatus
from tracker.domain.tracking import OrderState, Transition

_orders = Order.__table__
_events = OrderEvent.__table__


@dataclass(frozen=True, slots=True)
class ClaimedOrder:
    id: int
    external_id: int
    event_count: int
    completed_at: datetime | None
    state: OrderState


def claimed_external_ids(session: Session, claim_id: int, order_ids: Sequence[int]) -> dict[int, int]:
    """Row id -> provider order ID, for rows still held by ``claim_id`` and not final."""
    rows = session.execute(
        select(_orders.c.id, _orders.c.external_id).where(
            _orders.c.id.in_(order_ids),
            _orders.c.claim_id == claim_id,
            _orders.c.final == false(),
        )
    ).all()
    return {row.id: row.external_id for row in rows}


def lock_claimed(session: Session, claim_id: int, order_ids: Sequence[int]) -> list[ClaimedOrder]:
    """The claimed rows with their state, locked for this transaction on PostgreSQL."""
    query = (
        select(
            _orders.c.id,
            _orders.c.external_id,
            _orders.c.event_count,
            _orders.c.completed_at,
            _orders.c.status,
            _orders.c.raw_status,
            _orders.c.remains,
            _orders.c.charge,
            _orders.c.start_count,
            _orders.c.currency,
            _orders.c.last_observed_at,
            _orders.c.consecutive_not_found,
            _orders.c.unchanged_polls,
        )
        .where(_orders.c.id.in_(order_ids), _orders.c.claim_id == claim_id)
        .order_by(_orders.c.id)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return [
        ClaimedOrder(
            id=row.id,
            external_id=row.external_id,
            event_count=row.event_count,
            completed_at=row.completed_at,
            state=OrderState(
                status=OrderStatus(row.status) if row.status is not None else None,
                raw_status=row.raw_status,
                remains=row.remains,
                charge=row.charge,
                start_count=row.start_count,
                currency=row.currency,
                last_observed_at=row.last_observed_at,
                consecutive_not_found=row.consecutive_not_found,
                unchanged_polls=row.unchanged_polls,
            ),
        )
        for row in session.execute(query)
    ]


def write_states(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany UPDATE. Each dict holds ``row_id`` plus the columns to set, and every
    dict must have the same keys."""
    if not rows:
        return
    columns = [key for key in rows[0] if key != "row_id"]
    # Bind names must differ from column names in an UPDATE's SET clause.
    statement = (
        update(_orders)
        .where(_orders.c.id == bindparam("row_id"))
        .values({column: bindparam(f"new_{column}") for column in columns})
    )
    parameters = [
        {"row_id": row["row_id"], **{f"new_{column}": row[column] for column in columns}}
        for row in rows
    ]
    session.connection().execute(statement, parameters)


def state_columns(state: OrderState, *, now: datetime, next_poll_at: datetime) -> dict[str, Any]:
    """The orders columns that mirror an ``OrderState`` after a poll."""
    return {
        "status": state.status.value if state.status is not None else None,
        "raw_status": state.raw_status,
        "remains": state.remains,
        "charge": state.charge,
        "start_count": state.start_count,
        "currency": state.currency,
        "final": state.final,
        "last_observed_at": state.last_observed_at,
        "consecutive_not_found": state.consecutive_not_found,
        "unchanged_polls": state.unchanged_polls,
        "next_poll_at": next_poll_at,
        "claim_id": None,
        "updated_at": now,
    }


def event_row(order_id: int, seq: int, at: datetime, transition: Transition) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "seq": seq,
        "at": at,
        "from_status": transition.from_status.value if transition.from_status else None,
        "to_status": transition.to_status.value,
        "raw_status": transition.raw_status,
        "remains": transition.remains,
        "charge": transition.charge,
        "start_count": transition.start_count,
    }


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.connection().execute(insert(_events), list(rows))


def release_claim(
    session: Session, claim_id: int, order_ids: Sequence[int], *, next_poll_at: datetime
) -> int:
    """Give claimed rows back, due again at ``next_poll_at``; the data is untouched."""
    result = session.connection().execute(
        update(_orders)
        .where(_orders.c.id.in_(order_ids), _orders.c.claim_id == claim_id)
        .values(next_poll_at=next_poll_at, claim_id=None)
    )
    return int(result.rowcount)
