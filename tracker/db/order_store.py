"""Bulk reads and writes of order state for the poll path.

The hot path uses Core statements, not ORM objects. Per batch: one SELECT of the claimed
rows and their state (before the provider call), then in one transaction one UPDATE of
every polled row and one INSERT of the new events.

Every write is conditional on the claim: ``UPDATE ... WHERE claim_id = :claim``. Only
the claim's holder writes poll state, so the state read before the call is still the
row's state when the answer is applied. A row whose lease ran out and was claimed again
in the meantime is simply not written, and gets no event from this batch.

On PostgreSQL the UPDATE and the INSERT take the whole batch as one JSON parameter
(``tracker.db.bulk``): one statement and one round trip each, for any batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, false, select
from sqlalchemy.orm import Session

from tracker.db.bulk import insert_rows, release_claimed, update_rows
from tracker.db.models import Order, OrderEvent
from tracker.domain.status import OrderStatus
from tracker.domain.tracking import OrderState, Transition

_orders = cast(Table, Order.__table__)
_events = cast(Table, OrderEvent.__table__)


@dataclass(frozen=True, slots=True)
class ClaimedOrder:
    id: int
    external_id: int
    event_count: int
    completed_at: datetime | None
    service_id: int | None
    quantity: int | None
    # The claim's lease: a claimed row's next_poll_at is the lease's end.
    lease_until: datetime
    state: OrderState


_CLAIMED_COLUMNS = (
    "id",
    "external_id",
    "event_count",
    "completed_at",
    "service_id",
    "quantity",
    "next_poll_at",
    "status",
    "raw_status",
    "remains",
    "charge",
    "start_count",
    "currency",
    "last_observed_at",
    "consecutive_not_found",
    "unchanged_polls",
)


def claimed_orders(session: Session, claim_id: int, order_ids: Sequence[int]) -> list[ClaimedOrder]:
    """The rows still held by ``claim_id`` and not final, with their state."""
    rows = session.execute(
        select(*(_orders.c[name] for name in _CLAIMED_COLUMNS))
        .where(_orders.c.id.in_(order_ids), _orders.c.claim_id == claim_id, _orders.c.final == false())
        .order_by(_orders.c.id)
    )
    return [
        ClaimedOrder(
            id=row.id,
            external_id=row.external_id,
            event_count=row.event_count,
            completed_at=row.completed_at,
            service_id=row.service_id,
            quantity=row.quantity,
            lease_until=row.next_poll_at,
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
        for row in rows
    ]


def write_polled(session: Session, claim_id: int, rows: Sequence[dict[str, Any]]) -> set[int]:
    """Write each row's new poll state (``row_id`` plus every column of ``state_columns``
    and ``event_count``, ``completed_at``) where ``claim_id`` still holds it. Returns the
    ids written."""
    return update_rows(session, _orders, rows, claim_id=claim_id)


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
    insert_rows(session, _events, rows)


def release_claim(
    session: Session, claim_id: int, order_ids: Sequence[int], *, next_poll_at: datetime
) -> int:
    """Give claimed rows back, due again at ``next_poll_at``; the data is untouched."""
    return release_claimed(session, _orders, claim_id, order_ids, due_at=next_poll_at)
