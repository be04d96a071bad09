"""Cancelling orders at the provider (``tracker cancel``).

Only orders the tracker knows, whose service's catalog entry says ``cancel: true`` and
which are not final yet, are sent; every other ID is refused here with its reason, before
any call. The rest go out at most 100 per ``cancel`` call, and each call's answers are
stored (``cancel_requests``) in a transaction of its own before the next call, so a
failure later on loses nothing already answered. ``cancel`` is not idempotent: each
order's request is written as ``unknown`` ("sent, no answer yet") before the call and
completed with the answer after it, so a call whose answer was lost stays ``unknown``,
and an order with an accepted or unknown cancel is never sent one again. An accepted order is made due for polling at once; its new
status arrives through normal polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import false, select, update
from sqlalchemy.orm import Session

from tracker.db.clock import database_clock
from tracker.config import Settings
from tracker.db.models import CancelRequest, Order, Service
from tracker.db.session import UnitOfWork, unit_of_work, write_with_retries
from tracker.core.ids import parse_order_ids
from tracker.apiv2.client import MAX_IDS_PER_CALL
from tracker.apiv2.errors import InsecureProviderURL, NotSent, ProviderError, ProviderRejected
from tracker.apiv2.types import CancelAccepted, CancelResult
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.lookup import provider_by_name
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.providers.health import record_call

ACCEPTED = "accepted"
REFUSED = "refused"
UNKNOWN = "unknown"
NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class CancelLine:
    order_id: str
    outcome: str
    reason: str | None = None


def _refusal(order: Order | None, service: Service | None) -> str | None:
    """Why this order is not sent, or None when it may be."""
    if order is None:
        return "the order is not tracked"
    if order.service_id is None:
        return "the order's service is unknown (give it with `tracker track --service`)"
    if service is None:
        return f"service {order.service_id} is not in the provider's catalog (run `tracker provider sync`)"
    if service.cancel is None:
        return f"the provider's catalog does not say whether service {order.service_id} allows cancel"
    if not service.cancel:
        return f"service {order.service_id} does not allow cancel"
    if order.final:
        return f"the order is already final ({order.status})"
    return None


def _sent_before(outcome: str | None) -> str | None:
    """Why a cancel already sent for this order is not sent again, or None."""
    if outcome == ACCEPTED:
        return "a cancel of this order was already accepted; its new status comes by polling"
    if outcome == UNKNOWN:
        return "a cancel of this order was already sent and its answer is unknown; it is not sent again"
    return None


def cancel_orders(
    provider_name: str,
    raw_ids: Iterable[object],
    *,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> list[CancelLine]:
    """``clock``: by default the database's (the circuit and the next poll it writes are
    compared with the workers' times)."""
    parsed = parse_order_ids(raw_ids)
    lines = [
        CancelLine(str(given), REFUSED, reason) for given, reason, _ in parsed.rejected
    ]
    sendable: dict[int, int] = {}  # provider order ID -> row id
    with unit_of_work() as session:
        if clock is None:
            clock = database_clock(session)
        provider = provider_by_name(session, provider_name)
        access = ProviderAccess.of(provider, settings)
        orders = {
            order.external_id: order
            for order in session.scalars(
                select(Order).where(
                    Order.provider_id == provider.id,
                    Order.external_id.in_(parsed.valid),
                )
            )
        }
        services = {
            service.service_id: service
            for service in session.scalars(
                select(Service).where(Service.provider_id == provider.id)
            )
        }
        sent_before = _cancels_sent(session, [order.id for order in orders.values()])
        now = clock()
        for external_id in parsed.valid:
            order = orders.get(external_id)
            service = (
                services.get(order.service_id)
                if order and order.service_id is not None
                else None
            )
            reason = _refusal(order, service) or _sent_before(
                sent_before.get(order.id) if order is not None else None
            )
            if reason is None and order is not None:
                sendable[external_id] = order.id
                continue
            lines.append(CancelLine(str(external_id), REFUSED, reason))
            if order is not None:
                session.add(
                    CancelRequest(
                        order_id=order.id,
                        requested_at=now,
                        outcome=REFUSED,
                        message=reason,
                    )
                )
    ids = list(sendable)
    for start in range(0, len(ids), MAX_IDS_PER_CALL):
        lines.extend(
            _send(
                access,
                ids[start : start + MAX_IDS_PER_CALL],
                sendable,
                settings,
                gateway,
                clock,
                unit_of_work,
            )
        )
    return lines


def _send(
    access: ProviderAccess,
    chunk: Sequence[int],
    row_ids: dict[int, int],
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime],
    unit_of_work: UnitOfWork,
) -> list[CancelLine]:
    requested_at = clock()
    # The intent first, committed before the call: should the answer be lost (the process
    # killed, the database failing after the call), the orders show a cancel sent with
    # its answer unknown, and it is never sent again.
    with unit_of_work() as session:
        # Locked and checked again: another `tracker cancel` of the same orders may have
        # sent its own since this one looked.
        session.execute(select(Order.id).where(Order.id.in_(row_ids[e] for e in chunk)).with_for_update())
        sent_meanwhile = _cancels_sent(session, [row_ids[external_id] for external_id in chunk])
        refused = [
            CancelLine(str(external_id), REFUSED, _sent_before(sent_meanwhile[row_ids[external_id]]))
            for external_id in chunk
            if row_ids[external_id] in sent_meanwhile
        ]
        chunk = [external_id for external_id in chunk if row_ids[external_id] not in sent_meanwhile]
        intents = {
            external_id: CancelRequest(
                order_id=row_ids[external_id],
                requested_at=requested_at,
                outcome=UNKNOWN,
                message="sent; no answer recorded",
            )
            for external_id in chunk
        }
        session.add_all(intents.values())
        session.flush()
        intent_ids = {external_id: intent.id for external_id, intent in intents.items()}
    if not chunk:
        return refused
    error: ProviderError | None = None
    answers: dict[int, CancelResult] = {}
    lines: list[CancelLine] = []
    try:
        answers = gateway.client(access).cancel(chunk)
    except (RateLimitBusy, redis.RedisError):
        lines = [
            CancelLine(str(external_id), NOT_SENT, "the rate limit kept it back (busy, or Redis unreachable); try again")
            for external_id in chunk
        ]
    except (NotSent, InsecureProviderURL) as failure:
        lines = [CancelLine(str(external_id), NOT_SENT, f"not sent: {failure}") for external_id in chunk]
        error = failure
    except ProviderError as failure:
        error = failure
    if not lines:
        lines = [_line(external_id, answers.get(external_id), error) for external_id in chunk]

    def record() -> None:
        with unit_of_work() as session:
            if error is not None or answers:
                record_call(session, access.id, error, clock(), settings, gateway.rate_limiter)
            for line in lines:
                intent = session.get_one(CancelRequest, intent_ids[int(line.order_id)])
                intent.outcome = line.outcome
                intent.message = line.reason
            _poll_soon(
                session,
                [row_ids[int(line.order_id)] for line in lines if line.outcome == ACCEPTED],
                clock(),
            )

    # The answers are known: worth a few tries, or they stay "unknown" for good.
    write_with_retries(record)
    return refused + lines


def _line(
    external_id: int, answer: CancelResult | None, error: ProviderError | None
) -> CancelLine:
    if isinstance(answer, CancelAccepted):
        return CancelLine(str(external_id), ACCEPTED)
    if answer is not None:
        return CancelLine(str(external_id), REFUSED, f"provider said: {answer.message}")
    if isinstance(error, ProviderRejected):
        return CancelLine(
            str(external_id), REFUSED, f"provider said: {error.provider_message}"
        )
    if error is not None:
        return CancelLine(
            str(external_id),
            UNKNOWN,
            f"no answer, the cancel may or may not have happened: {error}",
        )
    return CancelLine(
        str(external_id), UNKNOWN, "the provider's answer left this order out"
    )


def _cancels_sent(session: Session, order_ids: Sequence[int]) -> dict[int, str]:
    """Order row id -> the outcome of a cancel sent for it before (accepted wins)."""
    rows = session.execute(
        select(CancelRequest.order_id, CancelRequest.outcome).where(
            CancelRequest.order_id.in_(order_ids), CancelRequest.outcome.in_([ACCEPTED, UNKNOWN])
        )
    ).all()
    sent: dict[int, str] = {}
    for order_id, outcome in rows:
        if sent.get(order_id) != ACCEPTED:
            sent[order_id] = outcome
    return sent


def _poll_soon(session: Session, order_ids: Sequence[int], now: datetime) -> None:
    if order_ids:
        session.execute(
            update(Order)
            .where(
                Order.id.in_(order_ids),
                Order.claim_id.is_(None),
                Order.final == false(),
            )
            .values(next_poll_at=now)
            .execution_options(synchronize_session=False)
        )
