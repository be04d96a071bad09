"""Read models for the CLI's ``--json`` output. The shapes are the public contract
(CONTRACT.md): add fields freely, never rename or remove one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.db.models import (
    CancelRequest,
    Drop,
    Order,
    OrderEvent,
    Provider,
    Refill,
    RefillAttempt,
    RefillEvent,
    RefillRequest,
)
from tracker.core.refills import AMBIGUOUS_OUTCOMES
from tracker.core.rendering import iso, money


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


def _drops(session: Session, order_id: int) -> list[dict[str, Any]]:
    drops = session.scalars(select(Drop).where(Drop.order_id == order_id).order_by(Drop.id)).all()
    return [
        {
            "at": iso(drop.detected_at),
            "source": drop.source,
            "observed_count": drop.observed_count,
            "expected_count": drop.expected_count,
            "eligible": drop.eligible,
            "reason": drop.reason,
        }
        for drop in drops
    ]


_UNANSWERED = {outcome.value for outcome in AMBIGUOUS_OUTCOMES}


def _refill_requests(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(RefillRequest, Refill.external_id)
        .outerjoin(Refill, Refill.id == RefillRequest.refill_id)
        .where(RefillRequest.order_id == order_id)
        .order_by(RefillRequest.id)
    ).all()
    views = []
    for request, refill_id in rows:
        attempts = session.scalars(
            select(RefillAttempt).where(RefillAttempt.request_id == request.id).order_by(RefillAttempt.id)
        ).all()
        views.append(
            {
                "trigger": request.trigger,
                "state": request.state,
                # "unknown": a refill call went out and its answer was lost.
                "answer": "unknown" if any(attempt.outcome in _UNANSWERED for attempt in attempts) else None,
                "refill_id": refill_id,
                "attempts": [
                    {"at": iso(attempt.at), "outcome": attempt.outcome, "message": attempt.message}
                    for attempt in attempts
                ],
                "next_attempt_at": iso(request.next_attempt_at) if not request.final else None,
                "last_message": request.last_message,
                "created_at": iso(request.created_at),
                "updated_at": iso(request.updated_at),
            }
        )
    return views


def _cancel_requests(session: Session, order_id: int) -> list[dict[str, Any]]:
    requests = session.scalars(
        select(CancelRequest).where(CancelRequest.order_id == order_id).order_by(CancelRequest.id)
    ).all()
    return [
        {"at": iso(request.requested_at), "outcome": request.outcome, "message": request.message}
        for request in requests
    ]


def order_detail(session: Session, order: Order, provider_name: str) -> dict[str, Any]:
    view = order_summary(order, provider_name)
    view["events"] = _order_events(session, order.id)
    view["refills"] = _refills(session, order.id)
    view["refillable"] = order.refillable
    view["drops"] = _drops(session, order.id)
    view["refill_requests"] = _refill_requests(session, order.id)
    view["cancel_requests"] = _cancel_requests(session, order.id)
    return view
