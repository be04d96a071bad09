"""Fair dispatch: how the real dispatcher (``claim_all`` on the in-memory database) shares
the workers' poll slots between providers over many task ends.

The number this puts on fairness: with S poll slots and P providers with due rows, a
provider that is waiting (due rows, nothing in flight) gets its next task within
ceil(P/S) task lengths, i.e. no other provider gets a second task before it gets one.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.usecases.helpers import add_provider, track
from tracker.config import Settings
from tracker.db.models import Order, Provider
from tracker.polling.dispatch import PollWork, SlotShare, claim_all
from tracker.testing import InMemoryBudgets, MemoryDatabase, SettableClock

# Seconds a task holds its slot (the longest, when lengths vary).
TASK_LENGTH = 10.0


def add_providers(db: MemoryDatabase, settings: Settings, clock: SettableClock, count: int, *, orders: int) -> list[int]:
    """``count`` providers, each with ``orders`` due orders polled one ID per call."""
    ids = []
    for index in range(count):
        name = f"panel{index}"
        provider_id = add_provider(db, settings, clock, name, rate_limit=1.0)
        with db.unit_of_work() as session:
            session.execute(update(Provider).where(Provider.id == provider_id).values(batch_size=1))
        track(db, clock, range(index * 100_000 + 1, index * 100_000 + orders + 1), provider=name)
        ids.append(provider_id)
    return ids


@dataclass
class Run:
    """A discrete-event run of the dispatcher: each task holds one slot until it ends."""

    db: MemoryDatabase
    settings: Settings
    clock: SettableClock
    slots: int
    providers: list[int]
    lengths: random.Random | None = None
    budgets: InMemoryBudgets = field(init=False)
    running: list[tuple[float, int, int]] = field(default_factory=list)  # (ends at, seq, provider)
    waiting_since: dict[int, float] = field(default_factory=dict)
    longest_wait: dict[int, float] = field(default_factory=dict)
    tasks: dict[int, int] = field(default_factory=dict)
    # What Redis keeps between dispatcher runs (tracker.polling.capacity.LastServed).
    last_served: dict[int, int] = field(default_factory=dict)
    started_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.budgets = InMemoryBudgets(self.settings.tick_interval)
        self.started_at = self.clock().timestamp()
        for provider_id in self.providers:
            self.waiting_since[provider_id] = 0.0

    def elapsed(self) -> float:
        return self.clock().timestamp() - self.started_at

    def in_flight(self) -> dict[int, int]:
        counts = {provider_id: 0 for provider_id in self.providers}
        for _, _, provider_id in self.running:
            counts[provider_id] += 1
        return counts

    def dispatch(self) -> None:
        share = SlotShare(self.slots, self.in_flight(), self.last_served)
        work = claim_all(self.settings, self.clock(), share, self.budgets, unit_of_work=self.db.unit_of_work)
        now = self.elapsed()
        for piece in work:
            assert isinstance(piece, PollWork)
            length = TASK_LENGTH if self.lengths is None else self.lengths.uniform(TASK_LENGTH / 4, TASK_LENGTH)
            heapq.heappush(self.running, (now + length, len(self.tasks) + sum(self.tasks.values()), piece.provider_id))
            self.tasks[piece.provider_id] = self.tasks.get(piece.provider_id, 0) + 1
            since = self.waiting_since.pop(piece.provider_id, None)
            if since is not None:
                self.longest_wait[piece.provider_id] = max(self.longest_wait.get(piece.provider_id, 0.0), now - since)
        assert len(self.running) <= self.slots, "more tasks than slots"

    def end_next_task(self) -> None:
        ends_at, _, provider_id = heapq.heappop(self.running)
        self.clock.advance(ends_at - self.elapsed())
        if provider_id not in {owner for _, _, owner in self.running}:
            self.waiting_since.setdefault(provider_id, ends_at)

    def run(self, task_ends: int) -> None:
        self.dispatch()
        for _ in range(task_ends):
            self.end_next_task()
            self.dispatch()
        # Who is still waiting has waited this long so far.
        for provider_id, since in self.waiting_since.items():
            self.longest_wait[provider_id] = max(self.longest_wait.get(provider_id, 0.0), self.elapsed() - since)


@pytest.mark.parametrize(
    ("slots", "providers"), [(1, 8), (2, 3), (2, 12), (4, 8), (3, 3)], ids=lambda value: str(value)
)
@pytest.mark.parametrize("lengths", ["equal", "varied"])
def test_a_waiting_provider_gets_a_slot_within_ceil_p_over_s_task_lengths(
    db: MemoryDatabase, settings: Settings, clock: SettableClock, slots: int, providers: int, lengths: str
) -> None:
    provider_ids = add_providers(db, settings, clock, providers, orders=600)
    run = Run(db, settings, clock, slots, provider_ids, None if lengths == "equal" else random.Random(slots * 100 + providers))
    run.run(task_ends=4 * providers)

    bound = math.ceil(providers / slots) * TASK_LENGTH
    assert max(run.longest_wait.values()) <= bound, (run.longest_wait, run.tasks)
    # Every provider stayed in contention to the end: several tasks each, rows still due.
    assert min(run.tasks.get(provider_id, 0) for provider_id in provider_ids) >= 3, run.tasks


def test_a_backlogged_provider_takes_the_slots_nobody_with_due_rows_needs(
    db: MemoryDatabase, settings: Settings, clock: SettableClock
) -> None:
    backlogged, *others = add_providers(db, settings, clock, 5, orders=600)
    # The other four have unfinished orders, none of them due for minutes.
    with db.unit_of_work() as session:
        session.execute(
            update(Order).where(Order.provider_id.in_(others)).values(next_poll_at=clock() + timedelta(minutes=4))
        )
    share = SlotShare(4, {provider_id: 0 for provider_id in [backlogged, *others]})
    work = claim_all(settings, clock(), share, InMemoryBudgets(settings.tick_interval), unit_of_work=db.unit_of_work)
    assert [piece.provider_id for piece in work] == [backlogged] * 4


def test_no_slot_is_kept_for_a_provider_that_cannot_use_it(
    db: MemoryDatabase, settings: Settings, clock: SettableClock
) -> None:
    """A provider with due rows but an open circuit (or no budget) takes no task this tick:
    a slot kept back for it would only sit idle beside a backlog."""
    backlogged, broken = add_providers(db, settings, clock, 2, orders=600)
    with db.unit_of_work() as session:
        session.execute(
            update(Provider).where(Provider.id == broken).values(
                consecutive_failures=5, circuit_open_until=clock() + timedelta(minutes=5)
            )
        )
    share = SlotShare(2, {backlogged: 0, broken: 0})
    work = claim_all(settings, clock(), share, InMemoryBudgets(settings.tick_interval), unit_of_work=db.unit_of_work)
    assert [piece.provider_id for piece in work] == [backlogged] * 2
