"""Outbox events, the messages for the shop, as plain data: built from transitions, no I/O.

(Not the history: ``order_events`` and ``refill_events`` rows are the append-only record
of transitions; an outbox event is what the shop is told about one.)

Every event has a stable ``id`` (a UUID made once, when the transition is recorded), a
``type`` and ``created_at``; the rest depends on the type. Money is a decimal string.

``order.status_changed`` carries the refund share for Partial and Canceled orders when
the quantity is known: ``refund_fraction = remains / quantity`` (what part of the order
was not delivered) and ``refund_due = charge × refund_fraction`` (that part of the
provider's charge), both exact decimals. A shop applies the fraction to its own price.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tracker.core.scheduling import failure_backoff
from tracker.core.status import FINAL_ORDER_STATUSES, OrderStatus
from tracker.core.rendering import iso
from tracker.core.tracking import Transition

REFUNDABLE = frozenset({OrderStatus.PARTIAL, OrderStatus.CANCELED})
MONEY_PLACES = Decimal("0.00000001")
# Back-off between failed deliveries of one event: 10 s doubling to an hour, jittered.
DELIVERY_RETRY_BASE = 10.0
DELIVERY_RETRY_CAP = 3600.0


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    kind: str
    provider_id: int | None
    order_id: int | None
    created_at: datetime
    payload: dict[str, Any]


def next_delivery_attempt(
    *,
    since: datetime,
    attempts: int,
    now: datetime,
    retry_for: timedelta,
    max_attempts: int | None = None,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try an event again after its ``attempts``-th failed delivery at ``now``, or
    None to give up. Retries go on until ``since`` (when the event was recorded or resent)
    + ``retry_for``, so a shop that is down for a while loses nothing; the last attempt is
    made at that deadline. ``max_attempts``, when set, ends them earlier."""
    deadline = since + retry_for
    if now >= deadline or (max_attempts is not None and attempts >= max_attempts):
        return None
    delay = failure_backoff(attempts, base=DELIVERY_RETRY_BASE, cap=DELIVERY_RETRY_CAP, rng=rng)
    return min(now + timedelta(seconds=delay), deadline)


def refund_share(
    status: OrderStatus, charge: Decimal | None, remains: int | None, quantity: int | None
) -> tuple[Decimal | None, Decimal | None]:
    """(refund_due, refund_fraction), or Nones when unknown or not refundable."""
    if status not in REFUNDABLE or remains is None or not quantity or quantity <= 0:
        return None, None
    undelivered = min(max(remains, 0), quantity)
    fraction = Decimal(undelivered) / Decimal(quantity)
    due = (charge * fraction).quantize(MONEY_PLACES).normalize() if charge is not None else None
    return due, fraction.normalize()


def _text(amount: Decimal | None) -> str | None:
    if amount is None:
        return None
    return format(amount, "f")


def order_transition(
    *,
    provider_id: int,
    provider_name: str,
    order_row_id: int,
    external_id: int,
    service_id: int | None,
    quantity: int | None,
    currency: str | None,
    transition: Transition,
    at: datetime,
) -> NewEvent:
    refund_due, refund_fraction = refund_share(
        transition.to_status, transition.charge, transition.remains, quantity
    )
    return _event(
        "order.status_changed", provider_id, provider_name, order_row_id, at,
        {
            "order_id": external_id,
            "service": service_id,
            "from_status": transition.from_status.value if transition.from_status else None,
            "to_status": transition.to_status.value,
            "raw_status": transition.raw_status,
            "remains": transition.remains,
            "charge": _text(transition.charge),
            "start_count": transition.start_count,
            "currency": currency,
            "final": transition.to_status in FINAL_ORDER_STATUSES,
            "quantity": quantity,
            "refund_due": _text(refund_due),
            "refund_fraction": _text(refund_fraction),
        },
    )


def refill_transition(
    *,
    provider_id: int,
    provider_name: str,
    order_row_id: int,
    external_order_id: int,
    refill_id: str,
    from_status: str | None,
    to_status: str,
    raw_status: str | None,
    at: datetime,
) -> NewEvent:
    return _event(
        "refill.status_changed", provider_id, provider_name, order_row_id, at,
        {
            "order_id": external_order_id,
            "refill_id": refill_id,
            "from_status": from_status,
            "to_status": to_status,
            "raw_status": raw_status,
        },
    )


def provider_alert(
    *, provider_id: int, provider_name: str, kind: str, message: str, at: datetime, **details: Any
) -> NewEvent:
    """``provider.paused`` (invalid key), ``provider.balance_low``, ..."""
    return _event(
        kind, provider_id, provider_name, None, at,
        {
            "message": message,
            **{key: (_text(value) if isinstance(value, Decimal) else value) for key, value in details.items()},
        },
    )


def _event(
    kind: str, provider_id: int, provider_name: str, order_row_id: int | None, at: datetime, fields: dict[str, Any]
) -> NewEvent:
    """Every event's envelope (a stable id, its type, when, which provider) around the
    kind's own fields."""
    event_id = str(uuid.uuid4())
    return NewEvent(
        event_id=event_id,
        kind=kind,
        provider_id=provider_id,
        order_id=order_row_id,
        created_at=at,
        payload={"id": event_id, "type": kind, "created_at": iso(at), "provider": provider_name, **fields},
    )
