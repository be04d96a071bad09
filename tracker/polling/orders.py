"""Orders as a polled kind: ``status`` calls with up to 100 IDs (``orders=``).

The claimed rows are read with their state in one SELECT (Core, no ORM objects: this is
the hot path), and judged by the pure state machine ``tracker.core.tracking``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, false, select
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.bulk import id_in
from tracker.db.models import Order, OrderEvent, Provider
from tracker.core.outbox_events import order_transition
from tracker.core.status import COMPLETION_STATUSES, OrderStatus
from tracker.core.tracking import OrderState, apply_observation
from tracker.polling.engine import ClaimedRow, Fetched, Observation, history_row, polled_columns
from tracker.apiv2.client import ProviderClient
from tracker.providers.gateway import ProviderAccess

_orders = cast(Table, Order.__table__)


@dataclass(frozen=True, slots=True)
class ClaimedOrder(ClaimedRow):
    completed_at: datetime | None
    service_id: int | None
    quantity: int | None
    state: OrderState


# In the order read_claimed unpacks them.
_CLAIMED_COLUMNS = (
    "id", "external_id", "event_count", "completed_at", "service_id", "quantity", "next_poll_at",
    "status", "raw_status", "remains", "charge", "start_count", "currency", "last_observed_at",
    "consecutive_not_found", "unchanged_polls",
)


# Enum lookup by value through the class call is slow; a dict of the known spellings is
# not. An unknown value still goes through OrderStatus() and raises as before.
_STATUS_BY_VALUE: dict[str, OrderStatus] = {status.value: status for status in OrderStatus}


def _status_of(value: str) -> OrderStatus:
    status = _STATUS_BY_VALUE.get(value)
    return status if status is not None else OrderStatus(value)


def state_of(row: Any) -> OrderState:
    """The state machine's view of an order row (a Core row or an ``Order``)."""
    return OrderState(
        status=OrderStatus(row.status) if row.status is not None else None,
        raw_status=row.raw_status,
        remains=row.remains,
        charge=row.charge,
        start_count=row.start_count,
        currency=row.currency,
        last_observed_at=row.last_observed_at,
        consecutive_not_found=row.consecutive_not_found,
        unchanged_polls=row.unchanged_polls,
    )


class OrderKind:
    name = "orders"
    action = "status"
    table = _orders
    events = cast(Table, OrderEvent.__table__)
    refusal_is_failure = True
    concurrent_calls = True

    def rows_per_call(self, provider: Provider) -> int:
        return provider.batch_size

    def read_claimed(self, session: Session, claim_id: int, row_ids: Sequence[int]) -> list[ClaimedOrder]:
        rows = session.execute(
            select(*(_orders.c[name] for name in _CLAIMED_COLUMNS))
            .where(id_in(session, _orders.c.id, row_ids), _orders.c.claim_id == claim_id, _orders.c.final == false())
            .order_by(_orders.c.id)
        ).all()
        # Plain tuples, fetched at once and unpacked by position: a poll reads up to 1,000
        # rows, and fetching them one at a time or reading a Row's attributes by name cost
        # more than the rest of building the state.
        status_of = _status_of
        return [
            ClaimedOrder(
                id=row_id,
                external_id=external_id,
                event_count=event_count,
                lease_until=next_poll_at,
                seen_before=status is not None,
                completed_at=completed_at,
                service_id=service_id,
                quantity=quantity,
                state=OrderState(
                    status=status_of(status) if status is not None else None,
                    raw_status=raw_status,
                    remains=remains,
                    charge=charge,
                    start_count=start_count,
                    currency=currency,
                    last_observed_at=last_observed_at,
                    consecutive_not_found=consecutive_not_found,
                    unchanged_polls=unchanged_polls,
                ),
            )
            for (
                row_id, external_id, event_count, completed_at, service_id, quantity, next_poll_at,
                status, raw_status, remains, charge, start_count, currency, last_observed_at,
                consecutive_not_found, unchanged_polls,
            ) in rows
        ]

    def fetch(self, client: ProviderClient, rows: Sequence[ClaimedOrder], facts: dict[str, Any]) -> Fetched:
        ids = [row.external_id for row in rows]
        return Fetched(results=dict(client.status_multi(ids)), answered=set(ids))

    def observe(
        self,
        row: ClaimedOrder,
        result: Any,
        observed_at: datetime,
        *,
        access: ProviderAccess,
        settings: Settings,
        shop_listens: bool,
    ) -> Observation:
        outcome = apply_observation(row.state, result, observed_at, not_found_after=settings.not_found_after)
        state = outcome.state
        columns = polled_columns(state) | {
            "remains": state.remains,
            "charge": state.charge,
            "start_count": state.start_count,
            "currency": state.currency,
            "completed_at": row.completed_at,
        }
        transition = outcome.transition
        if transition is None:
            return Observation(columns, state.unchanged_polls)
        if row.completed_at is None and transition.to_status in COMPLETION_STATUSES:
            columns["completed_at"] = observed_at
        event = history_row("order_id", row.id, transition) | {
            "remains": transition.remains,
            "charge": transition.charge,
            "start_count": transition.start_count,
        }
        shop_event = None
        if shop_listens:
            shop_event = order_transition(
                provider_id=access.id,
                provider_name=access.name,
                order_row_id=row.id,
                external_id=row.external_id,
                service_id=row.service_id,
                quantity=row.quantity,
                currency=state.currency,
                transition=transition,
                at=observed_at,
            )
        return Observation(columns, state.unchanged_polls, event, shop_event)


ORDERS = OrderKind()
