"""The one polling engine: poll a claimed batch of any polled kind (orders, refills).

A poll task holds a claim (``tracker.db.claims``) on up to ``calls_per_poll_task`` calls'
worth of rows of one provider. The engine:

1. reads the claimed rows and their state, in a short read-only transaction;
2. makes the kind's calls outside any transaction (a transaction held across a
   30-second read would hold row locks, and on SQLite the whole database, that long).
   A status poll's calls run at the same time, each on a thread of the task, within
   the provider's shared rate limit: waiting on a panel costs a thread, not a pool
   child. No new call starts after the first failure (a failing provider is not asked
   again until its back-off has passed), nor when it might outlast the lease, nor when
   its worst case (a whole try, and retries only as they fit) might outlast the task's
   soft time limit. A call the soft limit abandons counts as the provider's timeout;
3. applies every answer received in one transaction: a claim-checked bulk write of the
   new state (a row re-claimed meanwhile is not written and gets no event), the new
   history rows, the shop's events, and the provider's health;
4. gives back the rows it did not ask about, due after the provider's back-off;
5. re-raises an unexpected error only after 3 and 4, so nothing received is lost.

What differs between kinds (which call, how to read and judge an answer) sits behind
``PolledKind``; everything above is written once, here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline, deadline_or_after
from tracker.db.bulk import insert_rows, release_claimed, update_rows
from tracker.db.clock import database_clock
from tracker.db.models import Provider
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.core.outbox_events import NewEvent
from tracker.core.scheduling import draw_jitter, poll_delay
from tracker.apiv2.client import ProviderClient, calls_finish_by
from tracker.apiv2.errors import ProviderError, ProviderForgot, ProviderTimeout
from tracker.apiv2.types import ItemError
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.outbox.delivery import record_events, sink_configured
from tracker.providers.health import base_interval, record_success, retry_delay_after

log = logging.getLogger("tracker.poll")


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """What the engine needs of every claimed row; kinds subclass it with their state."""

    id: int
    external_id: Any
    event_count: int
    # The claim's lease: a claimed row's next_poll_at is the lease's end.
    lease_until: datetime
    # The provider has answered for this row before (it has a status).
    seen_before: bool


@dataclass(slots=True)
class Fetched:
    """What one group's call(s) brought back. ``answered`` holds the external IDs whose
    call completed; an ID left out of a completed answer counts as answered (we learned
    that the provider said nothing about it). ``error`` set with some IDs answered: the
    kind's calls failed part-way (single calls, one ID each)."""

    results: dict[Any, Any] = field(default_factory=dict)
    answered: set[Any] = field(default_factory=set)
    error: ProviderError | RateLimitBusy | None = None
    # Facts about the provider learned by these calls, written with the answers.
    provider_updates: dict[str, Any] = field(default_factory=dict)
    # The rest of the task's rows wait for the next tick (the calls they need changed).
    stop: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """One row's answer, judged by the kind's state machine."""

    # The kind's state columns (not the scheduling columns, which the engine adds).
    columns: dict[str, Any]
    unchanged_polls: int
    # The history row to append (without ``seq``), when something changed.
    event: dict[str, Any] | None = None
    # The shop's event for that change, when the shop listens.
    shop_event: NewEvent | None = None


class PolledState(Protocol):
    """What every kind's state machine keeps about one row (``db.models.Polled``)."""

    @property
    def status(self) -> Enum | None: ...
    @property
    def raw_status(self) -> str | None: ...
    @property
    def final(self) -> bool: ...
    @property
    def last_observed_at(self) -> datetime | None: ...
    @property
    def consecutive_not_found(self) -> int: ...


class PolledTransition(Protocol):
    @property
    def from_status(self) -> Enum | None: ...
    @property
    def to_status(self) -> Enum: ...
    @property
    def raw_status(self) -> str | None: ...


def polled_columns(state: PolledState) -> dict[str, Any]:
    """The state columns every polled kind has; a kind adds its own."""
    return {
        "status": state.status.value if state.status is not None else None,
        "raw_status": state.raw_status,
        "final": state.final,
        "last_observed_at": state.last_observed_at,
        "consecutive_not_found": state.consecutive_not_found,
    }


def history_row(owner_column: str, row_id: int, transition: PolledTransition) -> dict[str, Any]:
    """The history row every polled kind appends for a transition; a kind adds its own
    columns."""
    return {
        owner_column: row_id,
        "from_status": transition.from_status.value if transition.from_status else None,
        "to_status": transition.to_status.value,
        "raw_status": transition.raw_status,
    }


RowT = TypeVar("RowT", bound=ClaimedRow)


class PolledKind(Protocol[RowT]):
    """One kind of polled row. Implementations: ``tracker.polling.orders.ORDERS`` and
    ``tracker.polling.refills.REFILLS``."""

    name: str
    # The API v2 action this kind polls with, for errors and logs.
    action: str
    table: Table
    events: Table
    # A top-level refusal of this kind's call counts towards the circuit breaker: a status
    # call has no legitimate refusal (not-found answers come per ID).
    refusal_is_failure: bool
    # The task's calls may run at the same time. False where one call's answer changes
    # how the next is made (refill polls learn the provider's refill_status form).
    concurrent_calls: bool

    def rows_per_call(self, provider: Provider) -> int: ...

    def read_claimed(self, session: Session, claim_id: int, row_ids: Sequence[int]) -> list[RowT]: ...

    def fetch(self, client: ProviderClient, rows: Sequence[RowT], facts: dict[str, Any]) -> Fetched: ...

    def observe(
        self,
        row: RowT,
        result: Any,
        observed_at: datetime,
        *,
        access: ProviderAccess,
        settings: Settings,
        shop_listens: bool,
    ) -> Observation: ...


@dataclass(frozen=True, slots=True)
class PollSummary:
    kind: str
    provider_id: int
    asked: int = 0
    applied: int = 0
    transitions: int = 0
    error: str | None = None


# Threads one task's calls run on. Past this, more calls at once only wait on the
# provider's rate limit (or, at latency 0, on the GIL).
MAX_CALL_THREADS = 16

# A new call starts only if twice the longest call so far, plus this, still fits in the
# lease: the answers must be written while the task still holds the rows. And only if
# its worst case, plus this, fits before the task's soft time limit: they must be
# written before it too.
LEASE_SAFETY = timedelta(seconds=WRITE_MARGIN_SECONDS)


@dataclass(slots=True)
class _Calls(Generic[RowT]):
    answered: list[tuple[RowT, Any, datetime]] = field(default_factory=list)
    unasked: list[int] = field(default_factory=list)
    provider_updates: dict[str, Any] = field(default_factory=dict)
    # A call said the rest must be asked another way (``Fetched.stop``).
    stopped: bool = False
    # A provider's failure: its back-off applies to the unasked rows.
    error: ProviderError | RateLimitBusy | None = None
    # Anything else (Redis down under the rate limiter, a bug): re-raised once the
    # answers received are applied.
    unexpected: Exception | None = None


def poll_batch(
    kind: PolledKind[RowT],
    provider_id: int,
    claim_id: int,
    row_ids: Sequence[int],
    *,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] | None = None,
    deadline: Deadline | None = None,
    done_calling: Callable[[], None] | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> PollSummary:
    """``clock``: by default the database's (see ``tracker.db.clock``), so answers are
    ordered the same way whichever worker's wall clock ran ahead. ``deadline``: the
    task's soft time limit (by default TRACKER_TASK_SOFT_TIME_LIMIT from now).
    ``done_calling``: told when the task has no call left to make, before it writes (its
    provider slot may go to the next task while this one writes). ``unit_of_work``: where
    its transactions are opened (tests pass ``tracker.testing``'s)."""
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    # Read-only: on SQLite a deferred transaction, which never waits for the write lock.
    with unit_of_work(read_only=True) as session:
        if clock is None:
            clock = database_clock(session)
        provider = session.get(Provider, provider_id)
        if provider is None:
            log.warning("poll for an unknown provider id %s ignored", provider_id)
            return PollSummary(kind.name, provider_id, error="unknown provider")
        rows = kind.read_claimed(session, claim_id, row_ids)
        interval = base_interval(provider, settings)
        paused = provider.paused
        access = ProviderAccess.of(provider, settings)
        group_size = kind.rows_per_call(provider)
        facts = {
            "supports_multi_refill_status": provider.supports_multi_refill_status,
            "supports_multi_status": provider.supports_multi_status,
        }
        # A provider whose last call failed is asked once before the rest go out.
        slow_start = provider.consecutive_failures > 0
    if not rows:
        # Delivered late: the lease ran out and the rows were claimed again.
        return PollSummary(kind.name, provider_id)
    if paused:
        with unit_of_work() as session:
            release_claimed(
                session, kind.table, claim_id, [row.id for row in rows],
                due_at=clock() + timedelta(seconds=interval),
            )
        return PollSummary(kind.name, provider_id, error="provider paused")

    # Answers must be written before the lease ends and before the soft time limit.
    lease_end = min(row.lease_until for row in rows)
    finish_by = deadline.sooner(LEASE_SAFETY.total_seconds())
    calls = _call_all(
        kind, gateway.client(access), rows, group_size, facts, lease_end, finish_by, clock, slow_start=slow_start
    )
    if done_calling is not None:
        done_calling()
    try:
        summary = _apply(kind, access, claim_id, calls, interval, settings, clock(), unit_of_work)
    finally:
        if calls.unasked:
            _release_unasked(kind, access, claim_id, calls, interval, settings, gateway, clock(), unit_of_work)
    if calls.unexpected is not None:
        # Answers received were applied and the rest given back; now let it be seen.
        raise calls.unexpected
    if calls.unasked:
        if calls.error is not None:
            reason = type(calls.error).__name__
        elif calls.stopped:
            reason = "to be asked in another form from the next tick"
        else:
            reason = "lease or time limit running out"
        log.info(
            "gave back %d %s unasked (%s)", len(calls.unasked), kind.name, reason,
            extra={"provider": access.name, "claim_id": claim_id},
        )
    return summary


def _call_all(
    kind: PolledKind[RowT],
    client: ProviderClient,
    rows: list[RowT],
    group_size: int,
    facts: dict[str, Any],
    lease_end: datetime,
    finish_by: Deadline,
    clock: Callable[[], datetime],
    *,
    slow_start: bool,
) -> _Calls[RowT]:
    """Make the task's calls, concurrently when the kind allows it, and gather what came
    back in the rows' order. ``slow_start``: the first call goes alone, so a provider
    that is failing is asked once, not once per thread. ``finish_by``: every call, its
    retries included, ends by then.

    The calls run on threads of their own while this thread waits, so a soft time limit
    raised here (a signal, delivered to the main thread) stops the task at once: calls
    not answered by then count as unasked, and a call still out as the provider's
    timeout."""
    groups = [rows[offset : offset + group_size] for offset in range(0, len(rows), group_size)]
    run = _CallRun(kind, client, groups, facts, lease_end, finish_by, clock, slow_start)
    parallel = min(len(groups), MAX_CALL_THREADS) if kind.concurrent_calls else 1
    threads = [
        threading.Thread(target=run.work, name=f"{kind.name}-call-{index}", daemon=True)
        for index in range(parallel)
    ]
    for thread in threads:
        thread.start()
    interrupted: Exception | None = None
    try:
        for thread in threads:
            # Joined in short waits, so a signal's exception is raised here promptly.
            while thread.is_alive():
                thread.join(0.25)
    except Exception as error:  # a soft time limit; re-raised by poll_batch after applying
        interrupted = error
    return run.gather(interrupted)


@dataclass(slots=True)
class _CallRun(Generic[RowT]):
    """One task's calls, shared by its call threads: which group is next, whether to stop,
    and what each group's call brought back."""

    kind: PolledKind[RowT]
    client: ProviderClient
    groups: list[list[RowT]]
    facts: dict[str, Any]
    lease_end: datetime
    finish_by: Deadline
    clock: Callable[[], datetime]
    slow_start: bool
    lock: threading.Condition = field(default_factory=threading.Condition)
    next_group: int = 0
    stopped: bool = False
    longest: timedelta = timedelta(0)
    outcomes: dict[int, tuple[datetime, Fetched | Exception]] = field(default_factory=dict)

    def _take(self) -> tuple[int, datetime] | None:
        with self.lock:
            while self.slow_start and self.next_group == 1 and not self.outcomes and not self.stopped:
                self.lock.wait()
            if self.stopped or self.next_group >= len(self.groups):
                return None
            observed_at = self.clock()
            # Also before the first call: a task that waited in the queue past its lease
            # must not ask about rows the next tick may be claiming again.
            if observed_at + 2 * self.longest + LEASE_SAFETY > self.lease_end:
                self.stopped = True
                return None
            # A whole try must end before the soft time limit (retries are made only as
            # they fit: see calls_finish_by); one the limit cut short would be lost.
            if not self.finish_by.allows(self.client.attempt_bound()):
                self.stopped = True
                return None
            index = self.next_group
            self.next_group += 1
            return index, observed_at

    def work(self) -> None:
        while (taken := self._take()) is not None:
            index, observed_at = taken
            outcome: Fetched | Exception
            try:
                with calls_finish_by(self.finish_by):
                    outcome = self.kind.fetch(self.client, self.groups[index], self.facts)
            except (ProviderError, RateLimitBusy) as error:
                outcome = Fetched(error=error)
            except Exception as error:  # re-raised by poll_batch after applying the rest
                outcome = error
            with self.lock:
                self.longest = max(self.longest, self.clock() - observed_at)
                if self.stopped and self.next_group == -1:
                    return  # gathered already: the task went on without this answer
                self.outcomes[index] = (observed_at, outcome)
                if isinstance(outcome, Exception) or outcome.error is not None or outcome.stop:
                    # A failing provider is not asked again until its back-off has passed.
                    self.stopped = True
                else:
                    self.facts.update(outcome.provider_updates)
                self.lock.notify_all()

    def gather(self, interrupted: Exception | None) -> _Calls[RowT]:
        with self.lock:
            # Calls still out are abandoned: their answers, if any, are not used.
            out = set(range(max(self.next_group, 0))) - set(self.outcomes)
            self.stopped = True
            self.next_group = -1
            outcomes = dict(self.outcomes)
            self.lock.notify_all()
        calls: _Calls[RowT] = _Calls(unexpected=interrupted)
        for index, group in enumerate(self.groups):
            if index not in outcomes:
                calls.unasked.extend(row.id for row in group)
                continue
            observed_at, outcome = outcomes[index]
            if isinstance(outcome, Exception):
                calls.unexpected = calls.unexpected or outcome
                calls.unasked.extend(row.id for row in group)
                continue
            forgot = _forgotten(self.kind, group, outcome)
            if forgot is not None:
                # Logged with the provider's name when the failure is recorded.
                outcome = Fetched(error=forgot)
            calls.provider_updates.update(outcome.provider_updates)
            calls.stopped = calls.stopped or outcome.stop
            for row in group:
                if row.external_id in outcome.answered:
                    calls.answered.append((row, outcome.results.get(row.external_id), observed_at))
                else:
                    calls.unasked.append(row.id)
            if outcome.error is not None and calls.error is None:
                calls.error = outcome.error
        if interrupted is not None and out and calls.error is None:
            # Abandoned at the soft time limit: for the provider's circuit it is the
            # timeout it would have been, and its rows get the failure back-off (else a
            # panel that hangs would never open its circuit).
            calls.error = ProviderTimeout.abandoned(self.kind.action)
        return calls


# "Not found" for at least this share of at least this many rows the provider answered
# for before is about the provider (maintenance, a restored database, another account's
# key set by mistake), not about each row: taken as a failed call.
FORGOTTEN_SHARE = 0.9
FORGOTTEN_MIN_KNOWN = 5


def _forgotten(kind: PolledKind[RowT], group: Sequence[RowT], fetched: Fetched) -> ProviderForgot | None:
    known = [row for row in group if row.seen_before and row.external_id in fetched.answered]
    if len(known) < FORGOTTEN_MIN_KNOWN:
        return None
    missing = sum(1 for row in known if _means_not_found(fetched.results.get(row.external_id)))
    if missing < FORGOTTEN_SHARE * len(known):
        return None
    return ProviderForgot(kind.action, missing, len(known))


def _means_not_found(result: object) -> bool:
    return isinstance(result, ItemError) and result.means_not_found


def _apply(
    kind: PolledKind[RowT],
    access: ProviderAccess,
    claim_id: int,
    calls: _Calls[RowT],
    interval: float,
    settings: Settings,
    now: datetime,
    unit_of_work: UnitOfWork,
) -> PollSummary:
    asked = len(calls.answered) + len(calls.unasked)
    error = type(calls.error).__name__ if calls.error is not None else None
    if not calls.answered and not calls.provider_updates:
        return PollSummary(kind.name, access.id, asked=asked, error=error)
    state_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    shop_events: list[tuple[int, NewEvent]] = []
    shop_listens = sink_configured(settings)
    # One draw per task, not per row: rows polled together stay together.
    jitter = draw_jitter()
    # The next poll time depends on the row only through unchanged_polls: worked out once
    # per value, not once per row.
    next_polls: dict[int, datetime] = {}
    for row, result, observed_at in calls.answered:
        seen = kind.observe(
            row, result, observed_at, access=access, settings=settings, shop_listens=shop_listens
        )
        event_count = row.event_count
        if seen.event is not None:
            event_count += 1
            event_rows.append({**seen.event, "seq": event_count, "at": observed_at})
            if seen.shop_event is not None:
                shop_events.append((row.id, seen.shop_event))
        next_poll_at = next_polls.get(seen.unchanged_polls)
        if next_poll_at is None:
            delay = poll_delay(
                seen.unchanged_polls,
                base_interval=interval,
                max_factor=settings.max_poll_backoff_factor,
                jitter=jitter,
            )
            next_poll_at = next_polls[seen.unchanged_polls] = now + timedelta(seconds=delay)
        state_rows.append(
            {
                **seen.columns,
                "row_id": row.id,
                "event_count": event_count,
                "unchanged_polls": seen.unchanged_polls,
                "next_poll_at": next_poll_at,
                "claim_id": None,
                "updated_at": now,
            }
        )
    with unit_of_work() as session:
        if calls.provider_updates:
            session.execute(update(Provider).where(Provider.id == access.id).values(calls.provider_updates))
        if calls.error is None:
            # After a failed call the failure is what counts (see _release_unasked).
            record_success(session, access.id)
        written = update_rows(session, kind.table, state_rows, claim_id=claim_id)
        if len(written) < len(state_rows):
            # Rows re-claimed while we waited on the provider: their new holder records them.
            event_rows = [row for row in event_rows if row[_owner_column(kind)] in written]
            shop_events = [(row_id, event) for row_id, event in shop_events if row_id in written]
        insert_rows(session, kind.events, event_rows)
        # Same transaction: the shop hears of a transition if and only if it was recorded.
        record_events(session, settings, [event for _, event in shop_events])
    log.info(
        "polled %d %s: %d transitions",
        len(written),
        kind.name,
        len(event_rows),
        extra={"provider": access.name, "claim_id": claim_id},
    )
    return PollSummary(
        kind.name, access.id, asked=asked, applied=len(written), transitions=len(event_rows), error=error
    )


def _owner_column(kind: PolledKind[Any]) -> str:
    """The history table's column that points at the polled row (``order_id``, ``refill_id``)."""
    [column] = [fk.parent.name for fk in kind.events.foreign_keys if fk.column.table is kind.table]
    return column


def _release_unasked(
    kind: PolledKind[RowT],
    access: ProviderAccess,
    claim_id: int,
    calls: _Calls[RowT],
    interval: float,
    settings: Settings,
    gateway: Gateway,
    now: datetime,
    unit_of_work: UnitOfWork,
) -> None:
    """Leave unasked rows' data untouched: after a provider's failure they are due again
    after its back-off; after something unexpected, after one interval; after running
    out of lease, at once."""
    with unit_of_work() as session:
        retry_in = interval if calls.unexpected is not None else 0.0
        if calls.error is not None:
            retry_in = retry_delay_after(
                session, access.id, calls.error, interval, settings, gateway.rate_limiter, now,
                refusal_is_failure=kind.refusal_is_failure,
            )
        release_claimed(session, kind.table, claim_id, calls.unasked, due_at=now + timedelta(seconds=retry_in))
