"""The dispatcher tick: claim what is due, per provider, within each provider's budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from tracker.config import Settings
from tracker.db.claims import Claim, claim_due
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.domain.health import CircuitState, batches_per_tick
from tracker.usecases.polling import base_interval
from tracker.usecases.provider_health import health_of

# Share of the poll interval by which a batch may poll orders early to fill itself up.
FILL_HORIZON_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    provider_id: int
    claim: Claim


def claim_due_order_batches(settings: Settings, now: datetime) -> list[ClaimedBatch]:
    """Claim due orders of every provider, in one transaction. The caller enqueues one poll
    task per batch only after this returns, that is after the claims are committed."""
    batches: list[ClaimedBatch] = []
    with unit_of_work() as session:
        providers = session.scalars(select(Provider).where(Provider.paused.is_(False))).all()
        for provider in providers:
            health = health_of(provider)
            allowance = batches_per_tick(
                health, now, rate_limit=provider.rate_limit, tick_interval=settings.tick_interval
            )
            if allowance == 0:
                continue
            interval = base_interval(provider, settings)
            claims = claim_due(
                session,
                Order,
                provider_id=provider.id,
                now=now,
                lease_until=now + timedelta(seconds=settings.lease_seconds),
                batch_size=provider.batch_size,
                max_batches=allowance,
                fill_horizon=timedelta(seconds=interval * FILL_HORIZON_SHARE),
            )
            if claims and health.state(now) is CircuitState.HALF_OPEN:
                # One probe at a time: hold the circuit until the probe's result is recorded.
                provider.circuit_open_until = now + timedelta(
                    seconds=settings.http_read_timeout + settings.tick_interval
                )
            batches.extend(ClaimedBatch(provider.id, claim) for claim in claims)
    return batches
