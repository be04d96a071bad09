"""Bulk reads and writes for refills: the refill-status poll path, and the questions the
request path asks in bulk ("which of these orders has a refill in flight?").

Like ``order_store``: Core statements, one SELECT of the claimed rows, one executemany
UPDATE, one multi-row INSERT of the new events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, exists, false, func, select, union
from sqlalchemy.orm import Session

from tracker.db.bulk import (
    claimed_external_ids,
    insert_rows,
    lock_claimed_rows,
    release_claimed,
    update_rows,
)
from tracker.db.models import (
    OrderEvent,
    Refill,
    RefillAttempt,
    RefillEvent,
    RefillRequest,
)
from tracker.domain.refills import AMBIGUOUS_OUTCOMES, RefillState, RefillTransition
from tracker.domain.status import RefillStatus

_refills = cast(Table, Refill.__table__)
_events = cast(Table, RefillEvent.__table__)
_requests = cast(Table, RefillRequest.__table__)


@dataclass(frozen=True, slots=True)
class ClaimedRefill:
    id: int
    order_id: int
    external_id: str
    event_count: int
    state: RefillState


def claimed_refill_ids(
    session: Session, claim_id: int, refill_ids: Sequence[int]
) -> dict[int, str]:
    """Row id -> provider refill ID, for rows still held by ``claim_id`` and not final."""
    return claimed_external_ids(session, _refills, claim_id, refill_ids)


_CLAIMED_COLUMNS = (
    "id",
    "order_id",
    "external_id",
    "event_count",
    "status",
    "raw_status",
    "last_observed_at",
    "consecutive_not_found",
    "unchanged_polls",
)


def lock_claimed_refills(
    session: Session, claim_id: int, refill_ids: Sequence[int]
) -> list[ClaimedRefill]:
    """The claimed rows with their state, locked for this transaction on PostgreSQL."""
    return [
        ClaimedRefill(
            id=row.id,
            order_id=row.order_id,
            external_id=row.external_id,
            event_count=row.event_count,
            state=RefillState(
                status=RefillStatus(row.status) if row.status is not None else None,
                raw_status=row.raw_status,
                last_observed_at=row.last_observed_at,
                consecutive_not_found=row.consecutive_not_found,
                unchanged_polls=row.unchanged_polls,
            ),
        )
        for row in lock_claimed_rows(
            session, _refills, claim_id, refill_ids, _CLAIMED_COLUMNS
        )
    ]


def refill_state_columns(
    state: RefillState, *, now: datetime, next_poll_at: datetime
) -> dict[str, Any]:
    """The refills columns that mirror a ``RefillState`` after a poll."""
    return {
        "status": state.status.value if state.status is not None else None,
        "raw_status": state.raw_status,
        "final": state.final,
        "last_observed_at": state.last_observed_at,
        "consecutive_not_found": state.consecutive_not_found,
        "unchanged_polls": state.unchanged_polls,
        "next_poll_at": next_poll_at,
        "claim_id": None,
        "updated_at": now,
    }


def write_refill_states(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    update_rows(session, _refills, rows)


def refill_event_row(
    refill_id: int, seq: int, at: datetime, transition: RefillTransition
) -> dict[str, Any]:
    return {
        "refill_id": refill_id,
        "seq": seq,
        "at": at,
        "from_status": transition.from_status.value if transition.from_status else None,
        "to_status": transition.to_status.value,
        "raw_status": transition.raw_status,
    }


def insert_refill_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(session, _events, rows)


def release_refill_claim(
    session: Session,
    claim_id: int,
    refill_ids: Sequence[int],
    *,
    next_poll_at: datetime,
) -> int:
    return release_claimed(session, _refills, claim_id, refill_ids, due_at=next_poll_at)


def release_request_claim(
    session: Session,
    claim_id: int,
    request_ids: Sequence[int],
    *,
    next_attempt_at: datetime,
) -> int:
    return release_claimed(
        session,
        _requests,
        claim_id,
        request_ids,
        due_at=next_attempt_at,
        due_column="next_attempt_at",
    )


def orders_with_refill_in_flight(
    session: Session, order_ids: Sequence[int]
) -> set[int]:
    """Orders that have a pending refill request or a refill not yet final."""
    if not order_ids:
        return set()
    pending = select(_requests.c.order_id).where(
        _requests.c.order_id.in_(order_ids), _requests.c.final == false()
    )
    running = select(_refills.c.order_id).where(
        _refills.c.order_id.in_(order_ids), _refills.c.final == false()
    )
    return set(session.scalars(select(union(pending, running).subquery().c.order_id)))


def earlier_attempt_ambiguous(session: Session, request_id: int) -> bool:
    """Whether an attempt of this request went unanswered (it may have created a refill)."""
    query = select(
        exists().where(
            RefillAttempt.request_id == request_id,
            RefillAttempt.outcome.in_(
                [outcome.value for outcome in AMBIGUOUS_OUTCOMES]
            ),
        )
    )
    return bool(session.scalar(query))


def max_remains_seen(session: Session, order_ids: Sequence[int]) -> dict[int, int]:
    """The largest ``remains`` each order ever reported: its quantity, when the tracker saw
    it before delivery started, and a lower bound of it otherwise."""
    if not order_ids:
        return {}
    rows = session.execute(
        select(OrderEvent.order_id, func.max(OrderEvent.remains))
        .where(OrderEvent.order_id.in_(order_ids), OrderEvent.remains.is_not(None))
        .group_by(OrderEvent.order_id)
    ).all()
    return {order_id: remains for order_id, remains in rows if remains is not None}
