"""Poll one claimed batch of orders: one multi-status call, one transaction to apply it.

The HTTP call happens between two short transactions, never inside one: a transaction
held open across a 30-second read timeout would hold row locks (and, on SQLite, the whole
database) for that long. The first reads the claimed rows and their state; the second
writes the new state of the rows the claim still holds (see ``tracker.db.order_store``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tracker.clock import utcnow
from tracker.config import Settings
from tracker.db.models import Provider
from tracker.db.order_store import (
    ClaimedOrder,
    claimed_orders,
    event_row,
    insert_events,
    release_claim,
    state_columns,
    write_polled,
)
from tracker.db.session import unit_of_work
from tracker.domain.events import NewEvent, order_transition
from tracker.domain.scheduling import poll_delay
from tracker.domain.status import COMPLETION_STATUSES
from tracker.domain.tracking import apply_observation
from tracker.provider.errors import ProviderError
from tracker.provider.types import OrderResult
from tracker.ratelimit import RateLimitBusy
from tracker.usecases.gateway import Gateway, ProviderAccess
from tracker.usecases.outbox import record_events
from tracker.usecases.provider_health import record_success, retry_delay_after

log = logging.getLogger("tracker.poll")



@dataclass(frozen=True, slots=True)
class PollSummary:
    provider_id: int
    asked: int = 0
    applied: int = 0
    transitions: int = 0
    stale: int = 0
    error: str | None = None


def base_interval(provider: Provider, settings: Settings) -> float:
    return provider.poll_interval or settings.poll_interval


def poll_order_batch(
    provider_id: int,
    claim_id: int,
    order_ids: Sequence[int],
    *,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] = utcnow,
) -> PollSummary:
    with unit_of_work() as session:
        provider = session.get(Provider, provider_id)
        if provider is None:
            log.warning("poll for an unknown provider id %s ignored", provider_id)
            return PollSummary(provider_id, error="unknown provider")
        orders = claimed_orders(session, claim_id, order_ids)
        if not orders:
            # Delivered late: the lease ran out and the rows were claimed again.
            return PollSummary(provider_id)
        interval = base_interval(provider, settings)
        row_ids = [order.id for order in orders]
        if provider.paused:
            release_claim(session, claim_id, row_ids, next_poll_at=clock() + timedelta(seconds=interval))
            return PollSummary(provider_id, error="provider paused")
        access = ProviderAccess.of(provider, settings)

    client = gateway.client(access)
    observed_at = clock()
    try:
        results = client.status_multi([order.external_id for order in orders])
    except (ProviderError, RateLimitBusy) as error:
        _after_failed_call(access, claim_id, row_ids, error, interval, settings, gateway, clock())
        return PollSummary(provider_id, asked=len(orders), error=type(error).__name__)
    return _apply_results(access, claim_id, orders, results, observed_at, interval, settings, clock())


def _apply_results(
    access: ProviderAccess,
    claim_id: int,
    orders: list[ClaimedOrder],
    results: dict[int, OrderResult],
    observed_at: datetime,
    interval: float,
    settings: Settings,
    now: datetime,
) -> PollSummary:
    state_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    shop_events: list[NewEvent] = []
    stale = 0
    for order in orders:
        outcome = apply_observation(
            order.state,
            results.get(order.external_id),
            observed_at,
            not_found_after=settings.not_found_after,
        )
        stale += outcome.stale
        state = outcome.state
        completed_at = order.completed_at
        event_count = order.event_count
        if outcome.transition is not None:
            event_count += 1
            event_rows.append(event_row(order.id, event_count, observed_at, outcome.transition))
            shop_events.append(
                order_transition(
                    provider_id=access.id,
                    provider_name=access.name,
                    order_row_id=order.id,
                    external_id=order.external_id,
                    service_id=order.service_id,
                    quantity=order.quantity,
                    currency=state.currency,
                    transition=outcome.transition,
                    at=observed_at,
                )
            )
            if completed_at is None and outcome.transition.to_status in COMPLETION_STATUSES:
                completed_at = observed_at
        delay = poll_delay(
            state.unchanged_polls,
            base_interval=interval,
            max_factor=settings.max_poll_backoff_factor,
        )
        columns = state_columns(state, now=now, next_poll_at=now + timedelta(seconds=delay))
        columns.update(row_id=order.id, event_count=event_count, completed_at=completed_at)
        state_rows.append(columns)
    with unit_of_work() as session:
        record_success(session, access.id)
        written = write_polled(session, claim_id, state_rows)
        if len(written) < len(state_rows):
            # Rows re-claimed while we waited on the provider: their new holder records them.
            event_rows = [row for row in event_rows if row["order_id"] in written]
            shop_events = [event for event in shop_events if event.order_id in written]
        insert_events(session, event_rows)
        # Same transaction: the shop hears of a transition if and only if it was recorded.
        record_events(session, settings, shop_events)
    log.info(
        "polled %d orders: %d transitions",
        len(written),
        len(event_rows),
        extra={"provider": access.name, "claim_id": claim_id},
    )
    return PollSummary(
        access.id,
        asked=len(orders),
        applied=len(written),
        transitions=len(event_rows),
        stale=stale,
    )


def _after_failed_call(
    access: ProviderAccess,
    claim_id: int,
    row_ids: list[int],
    error: ProviderError | RateLimitBusy,
    interval: float,
    settings: Settings,
    gateway: Gateway,
    now: datetime,
) -> None:
    """Leave the orders' data untouched and make them due again after a back-off."""
    with unit_of_work() as session:
        retry_in = retry_delay_after(
            session, access.id, error, interval, settings, gateway.rate_limiter, now,
            refusal_is_failure=True,
        )
        release_claim(session, claim_id, row_ids, next_poll_at=now + timedelta(seconds=retry_in))
