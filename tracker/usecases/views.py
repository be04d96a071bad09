"""Read models for the CLI's ``--json`` output. The shapes are the public contract
(CONTRACT.md): add fields freely, never rename or remove one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.db.models import Order, OrderEvent, Provider, Refill, RefillEvent


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def money(amount: Decimal | None) -> str | None:
    return str(amount) if amount is not None else None


def order_summary(order: Order, provider_name: str) -> dict[str, Any]:
    return {
        "provider": provider_name,
        "order_id": order.external_id,
        "service": order.service_id,
        "status": order.status,
        "raw_status": order.raw_status,
        "remains": order.remains,
        "charge": money(order.charge),
        "start_count": order.start_count,
        "currency": order.currency,
        "final": order.final,
        "created_at": iso(order.created_at),
        "updated_at": iso(order.updated_at),
        "last_polled_at": iso(order.last_observed_at),
        "next_poll_at": None if order.final else iso(order.next_poll_at),
        "completed_at": iso(order.completed_at),
    }


def list_orders(
    session: Session,
    *,
    provider: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    query = select(Order, Provider.name).join(Provider, Provider.id == Order.provider_id)
    if provider is not None:
        query = query.where(Provider.name == provider)
    if status is not None:
        query = query.where(Order.status == status) if status != "none" else query.where(Order.status.is_(None))
    query = query.order_by(Provider.name, Order.external_id)
    if limit is not None:
        query = query.limit(limit)
    return [order_summary(order, name) for order, name in session.execute(query)]


def _order_events(session: Session, order_id: int) -> list[dict[str, Any]]:
    events: Sequence[OrderEvent] = session.scalars(
        select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.seq)
    ).all()
    return [
        {
            "at": iso(event.at),
            "from_status": event.from_status,
            "to_status": event.to_status,
            "raw_status": event.raw_status,
            "remains": event.remains,
            "charge": money(event.charge),
            "start_count": event.start_count,
        }
        for event in events
    ]


def _refills(session: Session, order_id: int) -> list[dict[str, Any]]:
    refills = session.scalars(select(Refill).where(Refill.order_id == order_id).order_by(Refill.id)).all()
    views = []
    for refill in refills:
        events = session.scalars(
            select(RefillEvent).where(RefillEvent.refill_id == refill.id).order_by(RefillEvent.seq)
        ).all()
        views.append(
            {
                "refill_id": refill.external_id,
                "status": refill.status,
                "raw_status": refill.raw_status,
                "requested_at": iso(refill.requested_at),
                "updated_at": iso(refill.updated_at),
                "events": [
                    {
                        "at": iso(event.at),
                        "from_status": event.from_status,
                        "to_status": event.to_status,
                        "raw_status": event.raw_status,
                    }
                    for event in events
                ],
            }
        )
    return views


def order_detail(session: Session, order: Order, provider_name: str) -> dict[str, Any]:
    view = order_summary(order, provider_name)
    view["events"] = _order_events(session, order.id)
    view["refills"] = _refills(session, order.id)
    return view
