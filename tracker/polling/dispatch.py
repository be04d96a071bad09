"""The dispatcher tick: claim what is due, per provider, within one budget per provider.

Every call kind a tick hands out draws on the same per-provider budget: refill
attempts (``refill``), refill-status polls and order-status polls. The budget is what the
provider's rate limit lets through in one tick, less the limiter's arrival margin, so the
queue never holds more than about a tick's worth of calls for a provider, and a provider
never sees more than its rate counting every kind together (the Redis limiter in front
of each call is the hard guarantee; this budget keeps work from piling up behind it).

Kinds are served in this order: refill attempts first (few, and a shop is waiting), then
refill polls, then order polls. A provider whose circuit is half-open gets exactly one
call for the whole tick, whatever its kind: the probe. The circuit is then held shut
until the probe's result is recorded (or the hold runs out, if the probe is lost), so a
second probe never goes out beside it.

Each round is one transaction, committed before it is yielded: the caller enqueues one
task per piece of work only then, so a task never exists for an uncommitted claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.claims import Claim, claim_due
from tracker.db.models import Order, Provider, Refill, RefillRequest
from tracker.db.session import unit_of_work
from tracker.domain.health import CircuitState, batches_per_tick
from tracker.polling.orders import ORDERS
from tracker.polling.refills import REFILLS
from tracker.ratelimit import ARRIVAL_MARGIN
from tracker.usecases.provider_health import base_interval, health_of

# Share of the poll interval by which a batch may poll rows early to fill itself up.
FILL_HORIZON_SHARE = 0.2

# Poll tasks claimed per provider per kind per transaction. The dispatcher commits and
# enqueues after each round, so polling starts while it is still claiming a backlog.
TASKS_PER_ROUND = 10


@dataclass(frozen=True, slots=True)
class PollWork:
    """A poll task's claim: rows of one kind (``orders`` or ``refills``) of one provider."""

    kind: str
    provider_id: int
    claim: Claim


@dataclass(frozen=True, slots=True)
class AttemptWork:
    """One refill request claimed for one ``refill`` call."""

    provider_id: int
    request_id: int
    claim_id: int


Work = PollWork | AttemptWork


def claim_rounds(settings: Settings, now: datetime) -> Iterator[list[Work]]:
    """Claim due work of every provider, a round at a time (see the module docstring)."""
    calls_left: dict[int, int] = {}
    while True:
        work: list[Work] = []
        with unit_of_work() as session:
            for provider in session.scalars(select(Provider).where(Provider.paused.is_(False))).all():
                if provider.id not in calls_left:
                    calls_left[provider.id] = tick_budget(provider, settings, now)
                budget = _Budget(calls_left[provider.id], settings.calls_per_poll_task * TASKS_PER_ROUND)
                claimed = _claim_for_provider(session, provider, budget, settings, now)
                calls_left[provider.id] = budget.left_for_tick()
                if claimed and health_of(provider).state(now) is CircuitState.HALF_OPEN:
                    # The probe is out: hold the circuit until its result is recorded, or
                    # until its claim's lease ends (the probe was lost).
                    provider.circuit_open_until = now + timedelta(seconds=settings.lease_seconds)
                work.extend(claimed)
        if not work:
            return
        yield work


def claim_all(settings: Settings, now: datetime) -> list[Work]:
    """Every piece of work one tick may claim: all rounds at once (tests, one-off runs)."""
    return [piece for work in claim_rounds(settings, now) for piece in work]


def tick_budget(provider: Provider, settings: Settings, now: datetime) -> int:
    """Calls one tick may hand out for this provider, every kind together."""
    return batches_per_tick(
        health_of(provider),
        now,
        # The limiter's margin counted in: a tick never hands out more calls than the
        # limiter lets through, so no backlog builds up behind it.
        rate_limit=provider.rate_limit / (1 + ARRIVAL_MARGIN),
        tick_interval=settings.tick_interval,
    )


@dataclass(slots=True)
class _Budget:
    tick_left: int
    round_left: int

    @property
    def available(self) -> int:
        """Calls this provider may still be handed in this round."""
        return min(self.tick_left, self.round_left)

    def spend(self, calls: int) -> None:
        self.tick_left -= calls
        self.round_left -= calls

    def left_for_tick(self) -> int:
        # A round that claimed less than it could emptied every kind's due rows: the next
        # round would find nothing more for this provider this tick.
        return 0 if self.round_left > 0 else self.tick_left


def _claim_for_provider(
    session: Session, provider: Provider, budget: _Budget, settings: Settings, now: datetime
) -> list[Work]:
    lease_until = now + timedelta(seconds=settings.lease_seconds)
    fill_horizon = timedelta(seconds=base_interval(provider, settings) * FILL_HORIZON_SHARE)
    work: list[Work] = []
    if budget.available <= 0:
        return work
    # 1. Refill attempts: one call each.
    attempts = claim_due(
        session, RefillRequest, provider_id=provider.id, now=now, lease_until=lease_until,
        batch_size=budget.available, max_batches=1, due_column="next_attempt_at",
    )
    for claim in attempts:
        work.extend(AttemptWork(provider.id, request_id, claim.claim_id) for request_id in claim.row_ids)
    budget.spend(len(work))
    # 2. and 3. Refill polls, then order polls: batches of up to calls_per_poll_task calls.
    for kind_name, model, rows_per_call in (
        ("refills", Refill, REFILLS.rows_per_call(provider)),
        ("orders", Order, ORDERS.rows_per_call(provider)),
    ):
        while budget.available > 0:
            calls = min(settings.calls_per_poll_task, budget.available)
            rows_wanted = rows_per_call * calls
            claims = claim_due(
                session, model, provider_id=provider.id, now=now, lease_until=lease_until,
                batch_size=rows_wanted, max_batches=1, fill_horizon=fill_horizon,
            )
            claimed_rows = sum(len(claim.row_ids) for claim in claims)
            work.extend(PollWork(kind_name, provider.id, claim) for claim in claims)
            budget.spend(-(-claimed_rows // rows_per_call))
            if claimed_rows < rows_wanted:
                break
    return work
