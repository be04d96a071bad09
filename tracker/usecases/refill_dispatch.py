"""The refill dispatcher tick: claim due refill requests and due refill-status polls.

The same claim/lease pattern as order polling (``tracker.db.claims``), within the same
per-provider budget: at most one tick's worth of calls per provider. Refill requests are
claimed by ``next_attempt_at``, refills by ``next_poll_at``. A provider that only answers
single ``refill_status`` calls gets batches of one tick's worth of refills, so one poll
task stays about one tick long. The caller enqueues the tasks after this returns, that
is after the claims are committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from tracker.config import Settings
from tracker.db.claims import claim_due
from tracker.db.models import Provider, Refill, RefillRequest
from tracker.db.session import unit_of_work
from tracker.domain.health import CircuitState, batches_per_tick
from tracker.usecases.dispatch import FILL_HORIZON_SHARE, ClaimedBatch
from tracker.usecases.polling import base_interval
from tracker.usecases.provider_health import health_of


@dataclass(frozen=True, slots=True)
class ClaimedRequest:
    request_id: int
    claim_id: int


@dataclass(slots=True)
class RefillWork:
    requests: list[ClaimedRequest] = field(default_factory=list)
    polls: list[ClaimedBatch] = field(default_factory=list)


def claim_due_refill_work(settings: Settings, now: datetime) -> RefillWork:
    work = RefillWork()
    lease_until = now + timedelta(seconds=settings.lease_seconds)
    with unit_of_work() as session:
        providers = session.scalars(
            select(Provider).where(Provider.paused.is_(False))
        ).all()
        for provider in providers:
            health = health_of(provider)
            allowance = batches_per_tick(
                health,
                now,
                rate_limit=provider.rate_limit,
                tick_interval=settings.tick_interval,
            )
            if allowance == 0:
                continue
            singles = provider.supports_multi_refill_status is False
            interval = base_interval(provider, settings)
            polls = claim_due(
                session,
                Refill,
                provider_id=provider.id,
                now=now,
                lease_until=lease_until,
                batch_size=allowance if singles else provider.batch_size,
                max_batches=1 if singles else allowance,
                fill_horizon=timedelta(seconds=interval * FILL_HORIZON_SHARE),
            )
            work.polls.extend(ClaimedBatch(provider.id, claim) for claim in polls)
            half_open = health.state(now) is CircuitState.HALF_OPEN
            requests = []
            if not (half_open and polls):
                requests = claim_due(
                    session,
                    RefillRequest,
                    provider_id=provider.id,
                    now=now,
                    lease_until=lease_until,
                    batch_size=allowance,
                    max_batches=1,
                    due_column="next_attempt_at",
                )
            work.requests.extend(
                ClaimedRequest(request_id, claim.claim_id)
                for claim in requests
                for request_id in claim.row_ids
            )
            if half_open and (polls or requests):
                # One probe at a time: hold the circuit until the probe's result is recorded.
                provider.circuit_open_until = now + timedelta(
                    seconds=settings.http_read_timeout + settings.tick_interval
                )
    return work
