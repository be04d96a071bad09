"""What the dispatcher claims: what is due, per provider, within one budget per provider.

A run (``tracker.polling.dispatch_runs``) comes on beat's tick and whenever a provider task ends. Every call kind it hands out
draws on the same per-provider budget: refill attempts (``refill``), refill-status polls
and order-status polls. The budget is what the provider's rate limit has let through
since the last run, less the limiter's arrival margin, up to one tick's worth (a token
bucket, ``tracker.polling.capacity.CallBudgets``), so the queue never holds more than
about a tick's worth of calls for a provider, and a provider never sees more than its
rate counting every kind together (the Redis limiter in front of each call is the hard
guarantee; this budget keeps work from piling up behind it).

Kinds are served in this order: refill attempts first (few, and a shop is waiting), then
refill polls, then order polls. A provider whose circuit is half-open gets exactly one
call for the whole tick, whatever its kind: the probe. The circuit is then held shut
until the probe's result is recorded (or the hold runs out, if the probe is lost), so a
second probe never goes out beside it.

Besides the rate budget, each provider may hold only its share of the workers' poll slots
with tasks queued or running (``SlotShare``, counted in ``tracker.polling.capacity``): the
slots are split evenly between the providers that still want some this tick, and a
provider that wants less leaves the rest to the others. Slots are kept back only for
providers with rows due now, and whoever has waited longest for a slot is served first
(``SlotShare.turn``). A slow panel thus holds at most its share of the pool while others
have due rows, and a provider with a million due orders cannot take the turn of seven
with a hundred each: on S slots, each of P providers with due rows gets its next task
within ceil(P/S) task lengths.

Each round is one transaction, committed before it is yielded: the caller enqueues one
task per piece of work only then, so a task never exists for an uncommitted claim. A run
starts a round only while one (twice the longest so far) and the enqueueing after it can
end before the task's soft time limit; what it did not claim is still due at the next.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import false, literal, select
from sqlalchemy.orm import Session

from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline
from tracker.db.claims import Claim, claim_due
from tracker.db.models import Order, Provider, Refill, RefillRequest
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.core.health import CircuitState, batches_per_tick
from tracker.polling.capacity import CallBudgets, FreshBudgets
from tracker.polling.orders import ORDERS
from tracker.polling.refills import REFILLS
from tracker.providers.ratelimit import ARRIVAL_MARGIN
from tracker.providers.health import base_interval, health_of

# Share of the poll interval by which a batch may poll rows early to fill itself up.
FILL_HORIZON_SHARE = 0.2

# Calls in the largest task the dispatcher makes for a provider held to few tasks.
LARGEST_TASK_CALLS = 50

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


@dataclass(slots=True)
class SlotShare:
    """How many more tasks each provider may have queued or running, and who goes first.

    ``slots`` None: no worker announced its capacity (a one-off run), so only the rate
    budget applies. Otherwise a provider may take (a) no more than an even split of the
    slots between the providers still wanting tasks this tick, and (b) only slots not
    kept free for the other providers with rows due now and nothing in flight. A provider
    with nothing due keeps no slot back: its rows find one when they come due, at the
    next task end at the latest, since it will then have waited longest.

    Whoever has waited longest goes first: providers are served in the order they were
    last handed a task (``last_served``, a sequence number kept in Redis by
    ``tracker.polling.capacity.LastServed``; never served counts as 0). Being served moves
    a provider to the back. So while P providers have due rows, none gets a second task
    before a waiting one gets its next: on S slots a waiting provider gets a task within
    ceil(P/S) task lengths.
    """

    slots: int | None
    in_flight: dict[int, int]
    # Updated in place as providers are served: the caller persists it.
    last_served: dict[int, int] = field(default_factory=dict)
    # Providers with rows of any kind due now.
    due: set[int] = field(default_factory=set)
    # Providers still wanting tasks this tick; one that took less than it was allowed
    # leaves its share to the others in the next round.
    wanting: set[int] = field(default_factory=set)

    def turn(self, provider_id: int) -> tuple[int, int]:
        """Sort key: the provider served longest ago first."""
        return (self.last_served.get(provider_id, 0), provider_id)

    def allowed(self, provider_id: int) -> int:
        if self.slots is None:
            return UNLIMITED
        share = -(-self.slots // max(1, len(self.wanting)))
        free = self.slots - sum(self.in_flight.values())
        kept_for_others = sum(
            1 for other in self.due if other != provider_id and self.in_flight.get(other, 0) == 0
        )
        # A provider with nothing in flight is never kept out by slots kept for others.
        usable = max(free - kept_for_others, 1 if self.in_flight.get(provider_id, 0) == 0 and free > 0 else 0)
        return max(0, min(share - self.in_flight.get(provider_id, 0), usable))

    def took(self, provider_id: int, tasks: int, allowed: int) -> None:
        self.in_flight[provider_id] = self.in_flight.get(provider_id, 0) + tasks
        if tasks > 0:
            self.last_served[provider_id] = max(self.last_served.values(), default=0) + 1
        if tasks < allowed:
            self.wanting.discard(provider_id)
        if tasks == 0 and allowed > 0:
            # Due rows it could not take (its circuit is open, its budget spent): a slot
            # kept back for it would only sit idle this tick.
            self.due.discard(provider_id)


UNLIMITED = 1 << 30


def claim_rounds(
    settings: Settings,
    now: datetime,
    share: SlotShare | None = None,
    budgets: CallBudgets | None = None,
    *,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> Iterator[list[Work]]:
    """Claim due work of every provider, a round at a time (see the module docstring).
    ``deadline``: the task's soft time limit (None: no limit)."""
    calls_left: dict[int, int] = {}
    share = share if share is not None else SlotShare(None, {})
    budgets = budgets if budgets is not None else FreshBudgets()
    first_round = True
    # The longest round so far, its claims and the caller's enqueueing after it: measured
    # from one round's start to the next's.
    longest = 0.0
    started: float | None = None
    while True:
        if started is not None:
            longest = max(longest, time.monotonic() - started)
        if deadline is not None and not deadline.allows(2 * longest + WRITE_MARGIN_SECONDS):
            return
        started = time.monotonic()
        work: list[Work] = []
        spent: dict[int, int] = {}
        with unit_of_work() as session:
            providers = session.scalars(select(Provider).where(Provider.paused.is_(False))).all()
            if first_round:
                share.wanting = {provider.id for provider in providers}
                if share.slots is not None:
                    share.due = {provider.id for provider in providers if _has_due_rows(session, provider.id, now)}
                first_round = False
            providers = sorted(providers, key=lambda provider: share.turn(provider.id))
            for provider in providers:
                if provider.id not in share.wanting:
                    continue
                if provider.id not in calls_left:
                    per_tick = tick_budget(provider, settings, now)
                    calls_left[provider.id] = budgets.available(
                        provider.id, per_tick, now, most=_most_saved(provider, per_tick, now)
                    )
                tasks_allowed = min(TASKS_PER_ROUND, share.allowed(provider.id))
                calls_per_task = _calls_per_task(
                    calls_left[provider.id], tasks_allowed, provider.rate_limit, settings
                )
                budget = _Budget(
                    calls_left[provider.id], calls_per_task * TASKS_PER_ROUND, tasks_allowed, calls_per_task
                )
                claimed = _claim_for_provider(session, provider, budget, settings, now)
                if budget.tick_left < calls_left[provider.id]:
                    spent[provider.id] = spent.get(provider.id, 0) + calls_left[provider.id] - budget.tick_left
                calls_left[provider.id] = budget.left_for_tick()
                share.took(provider.id, len(claimed), tasks_allowed)
                if claimed and health_of(provider).state(now) is CircuitState.HALF_OPEN:
                    # The probe is out: hold the circuit until its result is recorded, or
                    # until its claim's lease ends (the probe was lost).
                    provider.circuit_open_until = now + timedelta(seconds=settings.lease_seconds)
                work.extend(claimed)
        # Committed: what was claimed is spent.
        for provider_id, calls in spent.items():
            budgets.spend(provider_id, calls)
        if not work:
            return
        yield work


def _has_due_rows(session: Session, provider_id: int, now: datetime) -> bool:
    for model, due_column in ((Order, "next_poll_at"), (Refill, "next_poll_at"), (RefillRequest, "next_attempt_at")):
        table = model.__table__
        # One index probe each: the partial due indexes (NOT final) lead with provider_id
        # and the due time.
        found = session.execute(
            select(literal(1))
            .where(table.c.provider_id == provider_id, table.c.final == false(), table.c[due_column] <= now)
            .limit(1)
        ).first()
        if found is not None:
            return True
    return False


def claim_all(
    settings: Settings,
    now: datetime,
    share: SlotShare | None = None,
    budgets: CallBudgets | None = None,
    *,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> list[Work]:
    """Every piece of work one tick may claim: all rounds at once (tests, one-off runs)."""
    rounds = claim_rounds(settings, now, share, budgets, deadline=deadline, unit_of_work=unit_of_work)
    return [piece for work in rounds for piece in work]


def _most_saved(provider: Provider, per_tick: int, now: datetime) -> int:
    """The most calls a provider's budget may save up: a tick's worth, or, while its circuit
    is closed, one largest task's (a provider held to one slot hands out its calls a large
    task at a time; the tasks-in-flight cap keeps that from piling up in the queue)."""
    if health_of(provider).state(now) is not CircuitState.CLOSED:
        return per_tick
    return max(per_tick, LARGEST_TASK_CALLS)


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


def _calls_per_task(calls_left: int, tasks_allowed: int, rate_limit: float, settings: Settings) -> int:
    """The usual task size; larger when the provider may have fewer tasks than its budget
    fills, so a provider held to one or two slots still gets its calls: a task's calls
    run concurrently, so a larger task costs one answer's wait, not one per call. Never so
    large that the rate limit would stretch it past a quarter of its soft time limit."""
    if tasks_allowed <= 0 or tasks_allowed >= TASKS_PER_ROUND:
        return settings.calls_per_poll_task
    wanted = -(-calls_left // tasks_allowed)
    within_time = int(rate_limit * settings.task_soft_time_limit / 4)
    return max(settings.calls_per_poll_task, min(wanted, LARGEST_TASK_CALLS, within_time))


@dataclass(slots=True)
class _Budget:
    tick_left: int
    round_left: int
    tasks_left: int
    calls_per_task: int

    @property
    def available(self) -> int:
        """Calls this provider may still be handed in this round."""
        return min(self.tick_left, self.round_left) if self.tasks_left > 0 else 0

    def spend(self, calls: int, tasks: int) -> None:
        self.tick_left -= calls
        self.round_left -= calls
        self.tasks_left -= tasks

    def left_for_tick(self) -> int:
        # A round that claimed less than it could emptied every kind's due rows: the next
        # round would find nothing more for this provider this tick. One stopped by its
        # share of the slots may get more once other providers are served.
        return 0 if self.round_left > 0 and self.tasks_left > 0 else self.tick_left


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
        batch_size=min(budget.available, budget.tasks_left), max_batches=1, due_column="next_attempt_at",
    )
    for claim in attempts:
        work.extend(AttemptWork(provider.id, request_id, claim.claim_id) for request_id in claim.row_ids)
    budget.spend(len(work), len(work))
    # 2. and 3. Refill polls, then order polls: batches of up to calls_per_poll_task calls.
    for kind_name, model, rows_per_call in (
        ("refills", Refill, REFILLS.rows_per_call(provider)),
        ("orders", Order, ORDERS.rows_per_call(provider)),
    ):
        while budget.available > 0:
            calls = min(budget.calls_per_task, budget.available)
            rows_wanted = rows_per_call * calls
            claims = claim_due(
                session, model, provider_id=provider.id, now=now, lease_until=lease_until,
                batch_size=rows_wanted, max_batches=1, fill_horizon=fill_horizon,
            )
            claimed_rows = sum(len(claim.row_ids) for claim in claims)
            work.extend(PollWork(kind_name, provider.id, claim) for claim in claims)
            budget.spend(-(-claimed_rows // rows_per_call), len(claims))
            if claimed_rows < rows_wanted:
                break
    return work
