"""The dispatcher tick: claim what is due, per provider, within each provider's budget."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.claims import Claim, claim_due
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.domain.health import CircuitState, batches_per_tick
from tracker.ratelimit import ARRIVAL_MARGIN
from tracker.usecases.polling import base_interval
from tracker.usecases.provider_health import health_of

# Share of the poll interval by which a batch may poll orders early to fill itself up.
FILL_HORIZON_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    provider_id: int
    claim: Claim


# Poll tasks claimed per provider per transaction. The dispatcher commits and enqueues
# after each round, so polling starts while it is still claiming a large backlog.
TASKS_PER_ROUND = 10


def claim_due_order_batches(settings: Settings, now: datetime) -> list[ClaimedBatch]:
    """Every batch one tick may claim (see ``claim_rounds``)."""
    return [batch for batches in claim_rounds(settings, now) for batch in batches]


def claim_rounds(settings: Settings, now: datetime) -> Iterator[list[ClaimedBatch]]:
    """Claim due orders of every provider, a round at a time. Each round is one
    transaction, committed before it is yielded: the caller enqueues one poll task per
    batch only then, so a task never exists for an uncommitted claim.

    A batch holds the rows of up to ``calls_per_poll_task`` status calls: the task reads
    and writes them together, which spreads a task's and a transaction's fixed cost over
    many calls. Each provider's per-tick allowance counts calls, not tasks, across rounds."""
    calls_left: dict[int, int] = {}
    while True:
        batches: list[ClaimedBatch] = []
        with unit_of_work() as session:
            providers = session.scalars(select(Provider).where(Provider.paused.is_(False))).all()
            for provider in providers:
                health = health_of(provider)
                if provider.id not in calls_left:
                    # The limiter's margin counted in: a tick never hands out more calls
                    # than the limiter lets through, so no backlog builds up behind it.
                    calls_left[provider.id] = batches_per_tick(
                        health,
                        now,
                        rate_limit=provider.rate_limit / (1 + ARRIVAL_MARGIN),
                        tick_interval=settings.tick_interval,
                    )
                calls_per_task = settings.calls_per_poll_task
                allowance = min(calls_left[provider.id], calls_per_task * TASKS_PER_ROUND)
                if allowance == 0:
                    continue
                interval = base_interval(provider, settings)
                claims = _claim_chunks(
                    session,
                    provider,
                    now=now,
                    lease_until=now + timedelta(seconds=settings.lease_seconds),
                    calls_allowed=allowance,
                    calls_per_task=calls_per_task,
                    fill_horizon=timedelta(seconds=interval * FILL_HORIZON_SHARE),
                )
                claimed_calls = sum(-(-len(claim.row_ids) // provider.batch_size) for claim in claims)
                # Fewer rows than allowed: nothing more is due for this provider this tick.
                full = claimed_calls >= allowance
                calls_left[provider.id] = calls_left[provider.id] - claimed_calls if full else 0
                if claims and health.state(now) is CircuitState.HALF_OPEN:
                    # One probe at a time: hold the circuit until the probe's result is recorded.
                    provider.circuit_open_until = now + timedelta(
                        seconds=settings.http_read_timeout + settings.tick_interval
                    )
                batches.extend(ClaimedBatch(provider.id, claim) for claim in claims)
        if not batches:
            return
        yield batches


def _claim_chunks(
    session: Session,
    provider: Provider,
    *,
    now: datetime,
    lease_until: datetime,
    calls_allowed: int,
    calls_per_task: int,
    fill_horizon: timedelta,
) -> list[Claim]:
    claims: list[Claim] = []
    while calls_allowed > 0:
        calls = min(calls_per_task, calls_allowed)
        rows_wanted = provider.batch_size * calls
        claimed = claim_due(
            session,
            Order,
            provider_id=provider.id,
            now=now,
            lease_until=lease_until,
            batch_size=rows_wanted,
            max_batches=1,
            fill_horizon=fill_horizon,
        )
        claims.extend(claimed)
        if not claimed or len(claimed[0].row_ids) < rows_wanted:
            break
        calls_allowed -= calls
    return claims
