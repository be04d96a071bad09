"""Poll one claimed batch of refills through ``refill_status``, like order polling.

The multi form (``refills=``, at most 100 IDs) is used while the provider accepts it.
Some panels only answer the single form (``refill=``): when the multi form is refused as
an incorrect request (or answered in a shape no multi answer has, before it ever
worked), the provider is marked ``supports_multi_refill_status = False`` and the batch
goes out as single calls, each through the gateway's rate limit. The dispatcher gives
such providers batches of one tick's worth of calls.

Like order polling, the HTTP calls happen between two short transactions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tracker.clock import utcnow
from tracker.config import Settings
from tracker.db.models import Order, Provider
from tracker.db.refill_store import (
    ClaimedRefill,
    claimed_refill_ids,
    insert_refill_events,
    lock_claimed_refills,
    refill_event_row,
    refill_state_columns,
    release_refill_claim,
    write_refill_states,
)
from tracker.db.session import unit_of_work
from tracker.domain.events import NewEvent, refill_transition
from tracker.domain.refills import RefillTransition, apply_refill_observation
from tracker.domain.scheduling import draw_jitter, poll_delay
from tracker.provider.client import ProviderClient
from tracker.provider.errors import (
    IncorrectRequest,
    InvalidKey,
    ProviderError,
    ProviderRejected,
    UnexpectedShape,
)
from tracker.provider.types import ItemError, RefillResult
from tracker.ratelimit import RateLimitBusy
from tracker.usecases.gateway import Gateway, ProviderAccess
from tracker.usecases.outbox import record_events
from tracker.usecases.polling import base_interval
from tracker.usecases.provider_health import retry_delay_after

log = logging.getLogger("tracker.refill_poll")


@dataclass(frozen=True, slots=True)
class RefillPollSummary:
    provider_id: int
    asked: int = 0
    applied: int = 0
    transitions: int = 0
    error: str | None = None


@dataclass(slots=True)
class Fetched:
    """What the calls brought back. ``answered`` are the IDs whose call completed (an ID
    left out of a completed multi answer counts as answered: we learned nothing)."""

    results: dict[str, RefillResult] = field(default_factory=dict)
    answered: list[str] = field(default_factory=list)
    # True/False when this fetch learned whether the multi form works.
    multi_works: bool | None = None
    error: ProviderError | RateLimitBusy | None = None


def _demotes_multi(error: ProviderError, multi_proven: bool) -> bool:
    if isinstance(error, IncorrectRequest):
        return True
    return isinstance(error, UnexpectedShape) and not multi_proven


def fetch_refill_statuses(
    client: ProviderClient, refill_ids: Sequence[str], *, multi: bool | None
) -> Fetched:
    """``multi``: the provider's ``supports_multi_refill_status`` (None: not known yet)."""
    fetched = Fetched()
    if multi is not False:
        try:
            fetched.results = client.refill_status_multi(refill_ids)
            fetched.answered = list(refill_ids)
            fetched.multi_works = True if multi is None else None
            return fetched
        except RateLimitBusy as busy:
            fetched.error = busy
            return fetched
        except ProviderError as error:
            if not _demotes_multi(error, multi_proven=multi is True):
                fetched.error = error
                return fetched
            log.info(
                "provider refused the multi refill_status form; using single calls"
            )
            fetched.multi_works = False
    for refill_id in refill_ids:
        try:
            fetched.results[refill_id] = client.refill_status(refill_id)
        except (RateLimitBusy, InvalidKey, IncorrectRequest) as error:
            fetched.error = error
            return fetched
        except ProviderRejected as refusal:
            # A refusal about this one refill: the others are still worth asking about.
            fetched.results[refill_id] = ItemError(refusal.provider_message)
        except ProviderError as error:
            fetched.error = error
            return fetched
        fetched.answered.append(refill_id)
    return fetched


def poll_refill_batch(
    provider_id: int,
    claim_id: int,
    refill_ids: Sequence[int],
    *,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] = utcnow,
) -> RefillPollSummary:
    with unit_of_work() as session:
        provider = session.get(Provider, provider_id)
        if provider is None:
            return RefillPollSummary(provider_id, error="unknown provider")
        external_ids = claimed_refill_ids(session, claim_id, refill_ids)
        if not external_ids:
            return RefillPollSummary(provider_id)
        interval = base_interval(provider, settings)
        if provider.paused:
            release_refill_claim(
                session,
                claim_id,
                list(external_ids),
                next_poll_at=clock() + timedelta(seconds=interval),
            )
            return RefillPollSummary(provider_id, error="provider paused")
        access = ProviderAccess.of(provider, settings)
        multi = provider.supports_multi_refill_status

    observed_at = clock()
    fetched = fetch_refill_statuses(
        gateway.client(access), sorted(external_ids.values()), multi=multi
    )
    return _apply(
        access,
        claim_id,
        external_ids,
        fetched,
        observed_at,
        interval,
        settings,
        gateway,
        clock(),
    )


def _apply(
    access: ProviderAccess,
    claim_id: int,
    external_ids: dict[int, str],
    fetched: Fetched,
    observed_at: datetime,
    interval: float,
    settings: Settings,
    gateway: Gateway,
    now: datetime,
) -> RefillPollSummary:
    answered = set(fetched.answered)
    state_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    changed: list[tuple[ClaimedRefill, RefillTransition]] = []
    with unit_of_work() as session:
        if fetched.multi_works is not None:
            session.execute(
                update(Provider)
                .where(Provider.id == access.id)
                .values(supports_multi_refill_status=fetched.multi_works)
            )
        retry_in = retry_delay_after(
            session, access.id, fetched.error, interval, settings, gateway.rate_limiter, now
        )
        answered_rows = {
            row_id for row_id, external in external_ids.items() if external in answered
        }
        jitter = draw_jitter()
        for refill in lock_claimed_refills(session, claim_id, sorted(answered_rows)):
            outcome = apply_refill_observation(
                refill.state,
                fetched.results.get(refill.external_id),
                observed_at,
                not_found_after=settings.not_found_after,
            )
            event_count = refill.event_count
            if outcome.transition is not None:
                event_count += 1
                event_rows.append(
                    refill_event_row(
                        refill.id, event_count, observed_at, outcome.transition
                    )
                )
                changed.append((refill, outcome.transition))
            delay = poll_delay(
                outcome.state.unchanged_polls,
                base_interval=interval,
                max_factor=settings.max_poll_backoff_factor,
                jitter=jitter,
            )
            columns = refill_state_columns(
                outcome.state, now=now, next_poll_at=now + timedelta(seconds=delay)
            )
            columns.update(row_id=refill.id, event_count=event_count)
            state_rows.append(columns)
        write_refill_states(session, state_rows)
        insert_refill_events(session, event_rows)
        record_events(session, settings, _shop_events(session, access, changed, observed_at))
        unanswered = [row_id for row_id in external_ids if row_id not in answered_rows]
        if unanswered:
            release_refill_claim(
                session,
                claim_id,
                unanswered,
                next_poll_at=now + timedelta(seconds=retry_in),
            )
    log.info(
        "polled %d refills: %d transitions",
        len(state_rows),
        len(event_rows),
        extra={"provider": access.name, "claim_id": claim_id},
    )
    return RefillPollSummary(
        access.id,
        asked=len(external_ids),
        applied=len(state_rows),
        transitions=len(event_rows),
        error=type(fetched.error).__name__ if fetched.error is not None else None,
    )


def _shop_events(
    session: Session,
    access: ProviderAccess,
    changed: list[tuple[ClaimedRefill, RefillTransition]],
    observed_at: datetime,
) -> list[NewEvent]:
    if not changed:
        return []
    order_ids = {refill.order_id for refill, _ in changed}
    external = dict(session.execute(select(Order.id, Order.external_id).where(Order.id.in_(order_ids))).all())
    return [
        refill_transition(
            provider_id=access.id,
            provider_name=access.name,
            order_row_id=refill.order_id,
            external_order_id=external[refill.order_id],
            refill_id=refill.external_id,
            from_status=transition.from_status.value if transition.from_status else None,
            to_status=transition.to_status.value,
            raw_status=transition.raw_status,
            at=observed_at,
        )
        for refill, transition in changed
    ]
