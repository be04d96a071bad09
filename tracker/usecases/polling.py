"""Poll one claimed batch of orders: one multi-status call, one transaction to apply it.

The HTTP call happens between two short transactions, never inside one: a transaction
held open across a 30-second read timeout would hold row locks (and, on SQLite, the whole
database) for that long.
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
    claimed_external_ids,
    event_row,
    insert_events,
    lock_claimed,
    release_claim,
    state_columns,
    write_states,
)
from tracker.db.session import unit_of_work
from tracker.domain.events import NewEvent, order_transition
from tracker.domain.scheduling import failure_backoff, poll_delay
from tracker.domain.status import OrderStatus
from tracker.domain.tracking import apply_observation
from tracker.provider.errors import ProviderError
from tracker.provider.types import OrderResult
from tracker.ratelimit import RateLimitBusy
from tracker.usecases.gateway import Gateway, ProviderAccess
from tracker.usecases.outbox import record_events
from tracker.usecases.provider_health import record_failure, record_success

log = logging.getLogger("tracker.poll")

COMPLETION_STATUSES = frozenset({OrderStatus.COMPLETED, OrderStatus.PARTIAL})


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
        external_ids = claimed_external_ids(session, claim_id, order_ids)
        if not external_ids:
            # Delivered late: the lease ran out and the rows were claimed again.
            return PollSummary(provider_id)
        interval = base_interval(provider, settings)
        if provider.paused:
            release_claim(
                session, claim_id, list(external_ids), next_poll_at=clock() + timedelta(seconds=interval)
            )
            return PollSummary(provider_id, error="provider paused")
        access = ProviderAccess.of(provider, settings)

    client = gateway.client(access)
    observed_at = clock()
    try:
        results = client.status_multi(sorted(external_ids.values()))
    except (ProviderError, RateLimitBusy) as error:
        _after_failed_call(
            access, claim_id, list(external_ids), error, interval, settings, gateway, clock()
        )
        return PollSummary(provider_id, asked=len(external_ids), error=type(error).__name__)
    return _apply_results(
        access, claim_id, list(external_ids), results, observed_at, interval, settings, clock()
    )


def _apply_results(
    access: ProviderAccess,
    claim_id: int,
    row_ids: list[int],
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
    with unit_of_work() as session:
        record_success(session, access.id)
        for order in lock_claimed(session, claim_id, row_ids):
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
        write_states(session, state_rows)
        insert_events(session, event_rows)
        # Same transaction: the shop hears of a transition if and only if it was recorded.
        record_events(session, settings, shop_events)
    log.info(
        "polled %d orders: %d transitions",
        len(state_rows),
        len(event_rows),
        extra={"provider": access.name, "claim_id": claim_id},
    )
    return PollSummary(
        access.id,
        asked=len(row_ids),
        applied=len(state_rows),
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
        if isinstance(error, RateLimitBusy):
            retry_in = error.wait_seconds
        else:
            health = record_failure(session, access.id, error, now, settings, gateway.rate_limiter)
            retry_in = failure_backoff(
                max(1, health.consecutive_failures),
                base=max(settings.tick_interval, interval / 4),
                cap=interval * settings.max_poll_backoff_factor,
            )
        release_claim(session, claim_id, row_ids, next_poll_at=now + timedelta(seconds=retry_in))
