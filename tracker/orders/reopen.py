"""``tracker reopen``: put orders that ended ``Not found`` back into polling.

``Not found`` is final: the provider answered "Incorrect order ID" K times in a row. When
that was the provider's fault after all (an outage the tracker could not tell apart, an
API key of another account set by mistake), the operator reopens them. A reopened order
is due at once, with the status it had before (its next answer is compared with that,
and recorded as a transition when it differs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from tracker.db.models import Order, OrderEvent
from tracker.core.ids import parse_order_ids
from tracker.core.status import OrderStatus
from tracker.providers.lookup import provider_by_name

REOPENABLE = OrderStatus.NOT_FOUND


@dataclass(slots=True)
class Reopened:
    reopened: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def reopen_orders(session: Session, provider_name: object, raw_ids: Iterable[object], *, now: datetime) -> Reopened:
    """Reopen these orders of the provider; every ID that cannot be is refused with why."""
    provider = provider_by_name(session, provider_name)
    parsed = parse_order_ids(raw_ids)
    result = Reopened(refused=[(str(given), reason) for given, reason, _ in parsed.rejected])
    found = dict(
        session.execute(
            select(Order.external_id, Order.status).where(
                Order.provider_id == provider.id, Order.external_id.in_(parsed.valid)
            )
        ).all()
    )
    reopenable = []
    for external_id in parsed.valid:
        if external_id not in found:
            result.refused.append((str(external_id), "the order is not tracked"))
        elif found[external_id] != REOPENABLE.value:
            result.refused.append((str(external_id), f"the order is {found[external_id]}, not {REOPENABLE.value}"))
        else:
            reopenable.append(external_id)
    result.reopened = _reopen(session, provider.id, Order.external_id.in_(reopenable), now) if reopenable else 0
    return result


def reopen_by_status(session: Session, provider_name: object, status: str, *, now: datetime) -> int:
    """Reopen every order of the provider that ended with ``status`` (only ``Not found``)."""
    if status != REOPENABLE.value:
        raise ValueError(f"only orders that ended {REOPENABLE.value} can be reopened, not {status}")
    provider = provider_by_name(session, provider_name)
    return _reopen(session, provider.id, Order.status == REOPENABLE.value, now)


def _reopen(session: Session, provider_id: int, which: ColumnElement[bool], now: datetime) -> int:
    # Back to the status it had before it ended Not found (NULL if it was never answered):
    # left at Not found, a single further miss would end it again.
    before = (
        select(OrderEvent.from_status)
        .where(OrderEvent.order_id == Order.id, OrderEvent.to_status == REOPENABLE.value)
        .order_by(OrderEvent.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    result = session.connection().execute(
        update(Order)
        .where(Order.provider_id == provider_id, Order.final.is_(True), which)
        .values(
            status=before, final=False, consecutive_not_found=0, unchanged_polls=0,
            next_poll_at=now, claim_id=None, updated_at=now,
        )
    )
    return int(result.rowcount)
