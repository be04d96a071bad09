"""Refills as a polled kind: ``refill_status`` calls, followed to each refill's end.

The multi form (``refills=``, at most 100 IDs) is used while the provider accepts it; a
refill alone is asked with the single form (``refill=``), which every panel answers.
Some panels only answer the single form: when the multi form is refused as an incorrect
request (or, before it ever worked, answered in a shape no multi answer has or with a
top-level "Refill not found" for the whole batch, as the MSM "SMM Script" panels do),
the provider is marked ``supports_multi_refill_status = False`` and its refills go out
as single calls, one ID per call, each through the rate limit; the dispatcher then
counts one call per refill.
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
from tracker.db.models import Order, Provider, Refill, RefillEvent
from tracker.core.outbox_events import refill_transition
from tracker.core.refills import RefillState, apply_refill_observation
from tracker.core.status import RefillStatus
from tracker.polling.engine import ClaimedRow, Fetched, Observation, history_row, polled_columns
from tracker.apiv2.client import ProviderClient
from tracker.apiv2.errors import (
    IncorrectRequest,
    InvalidKey,
    ProviderError,
    ProviderRejected,
)
from tracker.apiv2.messages import refuses_batch_form
from tracker.apiv2.types import ItemError
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.gateway import ProviderAccess

log = logging.getLogger("tracker.poll")

_refills = cast(Table, Refill.__table__)
_orders = cast(Table, Order.__table__)

MULTI_FACT = "supports_multi_refill_status"


@dataclass(frozen=True, slots=True)
class ClaimedRefill(ClaimedRow):
    order_id: int
    external_order_id: int
    state: RefillState


def _demotes_multi(error: ProviderError, multi_proven: bool) -> bool:
    if isinstance(error, IncorrectRequest):
        return True
    return not multi_proven and refuses_batch_form(error)


class RefillKind:
    name = "refills"
    action = "refill_status"
    table = _refills
    events = cast(Table, RefillEvent.__table__)
    refusal_is_failure = False
    concurrent_calls = False

    def rows_per_call(self, provider: Provider) -> int:
        return 1 if provider.supports_multi_refill_status is False else provider.batch_size

    def read_claimed(self, session: Session, claim_id: int, row_ids: Sequence[int]) -> list[ClaimedRefill]:
        rows = session.execute(
            select(
                _refills.c.id, _refills.c.external_id, _refills.c.event_count, _refills.c.next_poll_at,
                _refills.c.order_id, _orders.c.external_id.label("external_order_id"),
                _refills.c.status, _refills.c.raw_status, _refills.c.last_observed_at,
                _refills.c.consecutive_not_found, _refills.c.unchanged_polls,
            )
            .join(_orders, _orders.c.id == _refills.c.order_id)
            .where(id_in(session, _refills.c.id, row_ids), _refills.c.claim_id == claim_id, _refills.c.final == false())
            .order_by(_refills.c.id)
        )
        return [
            ClaimedRefill(
                id=row.id,
                external_id=row.external_id,
                event_count=row.event_count,
                lease_until=row.next_poll_at,
                seen_before=row.status is not None,
                order_id=row.order_id,
                external_order_id=row.external_order_id,
                state=RefillState(
                    status=RefillStatus(row.status) if row.status is not None else None,
                    raw_status=row.raw_status,
                    last_observed_at=row.last_observed_at,
                    consecutive_not_found=row.consecutive_not_found,
                    unchanged_polls=row.unchanged_polls,
                ),
            )
            for row in rows
        ]

    def fetch(self, client: ProviderClient, rows: Sequence[ClaimedRefill], facts: dict[str, Any]) -> Fetched:
        ids = [row.external_id for row in rows]
        multi: bool | None = facts.get(MULTI_FACT)
        fetched = Fetched()
        if multi is not False and len(ids) > 1:
            try:
                fetched.results = dict(client.refill_status_multi(ids))
            except ProviderError as error:
                if not _demotes_multi(error, multi_proven=multi is True):
                    raise
                log.info("provider refused the multi refill_status form; single calls from the next tick")
                # The dispatcher budgeted this group as one call: the single calls it now
                # needs wait for the next tick, which counts one call per refill.
                return Fetched(provider_updates={MULTI_FACT: False}, stop=True)
            else:
                fetched.answered = set(ids)
                if multi is None:
                    fetched.provider_updates[MULTI_FACT] = True
                return fetched
        for refill_id in ids:
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
            fetched.answered.add(refill_id)
        return fetched

    def observe(
        self,
        row: ClaimedRefill,
        result: Any,
        observed_at: datetime,
        *,
        access: ProviderAccess,
        settings: Settings,
        shop_listens: bool,
    ) -> Observation:
        outcome = apply_refill_observation(row.state, result, observed_at, not_found_after=settings.not_found_after)
        state = outcome.state
        columns = polled_columns(state)
        transition = outcome.transition
        if transition is None:
            return Observation(columns, state.unchanged_polls)
        event = history_row("refill_id", row.id, transition)
        shop_event = None
        if shop_listens:
            shop_event = refill_transition(
                provider_id=access.id,
                provider_name=access.name,
                order_row_id=row.order_id,
                external_order_id=row.external_order_id,
                refill_id=row.external_id,
                from_status=event["from_status"],
                to_status=transition.to_status.value,
                raw_status=transition.raw_status,
                at=observed_at,
            )
        return Observation(columns, state.unchanged_polls, event, shop_event)


REFILLS = RefillKind()
