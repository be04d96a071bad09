"""Orders as a polled kind: ``status`` calls with up to 100 IDs (``orders=``).

The claimed rows are read with their state in one SELECT (Core, no ORM objects: this is
the hot path), and judged by the pure state machine ``tracker.core.tracking``.

One order alone is asked with the single form (``order=``), which every panel answers.
Some panels know no other: the MSM "SMM Script" family reads ``order`` only, and answers
a batch (``orders=``) with ``{"error": "Order not found."}``, a one-ID batch included,
of an order it has. So while the batch form is unproven, a batch answered with a
top-level "not found", "incorrect request" or a shape no batch answer has marks the
provider ``supports_multi_status = False``, and its orders are asked one per call from
the next tick, each call through the rate limit. The first batch answer that reports an
order marks it ``True``: from then on such an answer is the provider failing, as before.
"""

from __future__ import annotations

import logging
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
from tracker.apiv2.errors import ProviderError
from tracker.apiv2.messages import refuses_batch_form
from tracker.apiv2.types import OrderReport
from tracker.providers.gateway import ProviderAccess
from tracker.providers.ratelimit import RateLimitBusy

log = logging.getLogger("tracker.poll")

_orders = cast(Table, Order.__table__)

MULTI_FACT = "supports_multi_status"


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
        return 1 if provider.supports_multi_status is False else provider.batch_size

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
        multi: bool | None = facts.get(MULTI_FACT)
        if len(ids) == 1 or multi is False:
            return _single_calls(client, ids)
        try:
            results = client.status_multi(ids)
        except ProviderError as error:
            if multi is True or not refuses_batch_form(error):
                raise
            log.info("provider refused the batch status form (orders=); single calls from the next tick")
            # The dispatcher budgeted this group as one call: the single calls it now
            # needs wait for the next tick, which counts one call per order.
            return Fetched(provider_updates={MULTI_FACT: False}, stop=True)
        fetched = Fetched(results=dict(results), answered=set(ids))
        if multi is None and any(isinstance(result, OrderReport) for result in results.values()):
            fetched.provider_updates[MULTI_FACT] = True
        return fetched

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


def _single_calls(client: ProviderClient, ids: Sequence[int]) -> Fetched:
    """``order=`` calls, one per ID; a failure stops them and keeps what was answered."""
    fetched = Fetched()
    for order_id in ids:
        try:
            fetched.results[order_id] = client.status(order_id)
        except (ProviderError, RateLimitBusy) as error:
            fetched.error = error
            return fetched
        fetched.answered.add(order_id)
    return fetched


ORDERS = OrderKind()
