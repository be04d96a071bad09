"""Poll one claimed batch of orders: one multi-status call, one transaction to apply it.

The HTTP call happens between two short transactions, never inside one: a transaction
held open across a 30-second read timeout would hold row locks (and, on SQLite, the whole
database) for that long. The first reads the claimed rows and their state; the second
writes the new state of the rows the claim still holds (see ``tracker.db.order_store``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
from tracker.domain.scheduling import draw_jitter, poll_delay
from tracker.domain.status import COMPLETION_STATUSES
from tracker.domain.tracking import apply_observation
from tracker.provider.client import ProviderClient
from tracker.provider.errors import ProviderError
from tracker.provider.types import OrderResult
from tracker.ratelimit import RateLimitBusy
from tracker.usecases.gateway import Gateway, ProviderAccess
from tracker.usecases.outbox import record_events, sink_configured
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
        if provider.paused:
            row_ids = [order.id for order in orders]
            release_claim(session, claim_id, row_ids, next_poll_at=clock() + timedelta(seconds=interval))
            return PollSummary(provider_id, error="provider paused")
        access = ProviderAccess.of(provider, settings)

    lease_until = min(order.lease_until for order in orders)
    calls = _call_all(gateway.client(access), orders, access.batch_size, lease_until, clock)
    try:
        summary = _apply_results(access, claim_id, calls, interval, settings, clock())
    finally:
        if calls.unasked:
            _release_unasked(access, claim_id, calls, interval, settings, gateway, clock())
    if calls.unexpected is not None:
        # Answers received were applied and the rest given back; now let it be seen.
        raise calls.unexpected
    if calls.unasked:
        log.info(
            "gave back %d orders unasked (%s)",
            len(calls.unasked),
            type(calls.error).__name__ if calls.error else "lease running out",
            extra={"provider": access.name, "claim_id": claim_id},
        )
    if calls.error is None:
        return summary
    return replace(summary, error=type(calls.error).__name__)


# A new call starts only if twice the longest call so far, plus this, still fits in the
# lease: the answers must be written while the task still holds the rows.
LEASE_SAFETY = timedelta(seconds=2)


@dataclass(slots=True)
class _Calls:
    answered: list[tuple[ClaimedOrder, OrderResult | None, datetime]] = field(default_factory=list)
    unasked: list[int] = field(default_factory=list)
    # A provider's failure: its back-off applies to the unasked orders.
    error: ProviderError | RateLimitBusy | None = None
    # Anything else (Redis down under the rate limiter, a bug): re-raised once the
    # answers received are applied.
    unexpected: Exception | None = None


def _call_all(
    client: ProviderClient,
    orders: list[ClaimedOrder],
    batch_size: int,
    lease_until: datetime,
    clock: Callable[[], datetime],
) -> _Calls:
    """One status call per ``batch_size`` orders, in turn. The first failed call stops the
    rest: a failing provider is not asked again until its back-off has passed. Calls stop
    too when the lease could run out before the answers are written."""
    calls = _Calls()
    longest = timedelta(0)
    for offset in range(0, len(orders), batch_size):
        group = orders[offset : offset + batch_size]
        observed_at = clock()
        if offset and observed_at + 2 * longest + LEASE_SAFETY > lease_until:
            calls.unasked.extend(order.id for order in orders[offset:])
            break
        try:
            results = client.status_multi([order.external_id for order in group])
        except (ProviderError, RateLimitBusy) as error:
            calls.error = error
        except Exception as error:  # re-raised by poll_order_batch after applying the rest
            calls.unexpected = error
        if calls.error is not None or calls.unexpected is not None:
            calls.unasked.extend(order.id for order in orders[offset:])
            break
        longest = max(longest, clock() - observed_at)
        calls.answered.extend((order, results.get(order.external_id), observed_at) for order in group)
    return calls


def _apply_results(
    access: ProviderAccess,
    claim_id: int,
    calls: _Calls,
    interval: float,
    settings: Settings,
    now: datetime,
) -> PollSummary:
    answered = calls.answered
    if not answered:
        return PollSummary(access.id, asked=len(calls.unasked))
    state_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    shop_events: list[NewEvent] = []
    events_wanted = sink_configured(settings)
    stale = 0
    jitter = draw_jitter()
    for order, result, observed_at in answered:
        outcome = apply_observation(
            order.state,
            result,
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
            if events_wanted:
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
            jitter=jitter,
        )
        columns = state_columns(state, now=now, next_poll_at=now + timedelta(seconds=delay))
        columns.update(row_id=order.id, event_count=event_count, completed_at=completed_at)
        state_rows.append(columns)
    with unit_of_work() as session:
        if calls.error is None:
            # After a failed call the failure is what counts (see _release_unasked).
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
        asked=len(answered) + len(calls.unasked),
        applied=len(written),
        transitions=len(event_rows),
        stale=stale,
    )


def _release_unasked(
    access: ProviderAccess,
    claim_id: int,
    calls: _Calls,
    interval: float,
    settings: Settings,
    gateway: Gateway,
    now: datetime,
) -> None:
    """Leave unasked orders' data untouched: after a provider's failure they are due again
    after its back-off; after something unexpected, after one interval; after running
    out of lease, at once."""
    with unit_of_work() as session:
        retry_in = interval if calls.unexpected is not None else 0.0
        if calls.error is not None:
            retry_in = retry_delay_after(
                session, access.id, calls.error, interval, settings, gateway.rate_limiter, now,
                refusal_is_failure=True,
            )
        release_claim(session, claim_id, calls.unasked, next_poll_at=now + timedelta(seconds=retry_in))
