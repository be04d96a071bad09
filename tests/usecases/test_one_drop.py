"""One drop, one refill: a drop reported again while its refill request is open or its
refill still runs is the same drop. Only a report after the order's last refill ended is
a new drop, and it waits for the cool-down's end. Each state a report can meet, on the
use cases themselves (in-memory database, scripted panel, settable clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.usecases.helpers import completed_with_refill, tick
from tracker.config import Settings
from tracker.db.models import Drop, RefillRequest
from tracker.providers.gateway import Gateway
from tracker.refills.drops import DropReport, report_drop
from tracker.testing import MemoryDatabase, ScriptedPanel, SettableClock, cut_after_acting, too_many_requests

ORDER = 601
SERVICE = 7
COOLDOWN_HOURS = 1.0
COOLDOWN_S = COOLDOWN_HOURS * 3600


@pytest.fixture
def short_cooldown(settings: Settings) -> Settings:
    return replace(settings, refill_cooldown_hours=COOLDOWN_HOURS)


@pytest.fixture
def completed(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, provider_id: int
) -> None:
    completed_with_refill(db, short_cooldown, gateway, panel, clock, provider_id, ORDER, SERVICE)


def report(db: MemoryDatabase, settings: Settings, clock: SettableClock) -> DropReport:
    with db.unit_of_work() as session:
        return report_drop(session, "panel", ORDER, settings=settings, now=clock())


def requests_opened(db: MemoryDatabase) -> list[RefillRequest]:
    with db.unit_of_work(read_only=True) as session:
        return list(session.scalars(select(RefillRequest).order_by(RefillRequest.id)))


def drops_recorded(db: MemoryDatabase) -> list[str | None]:
    with db.unit_of_work(read_only=True) as session:
        return list(session.scalars(select(Drop.reason).order_by(Drop.id)))


def past_the_cooldown(db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock) -> None:
    """Every refill of the panel completes, and ticks run until long past the cool-down."""
    for refill_id in panel.refill_states:
        panel.refill_states[refill_id] = "Completed"
    for _ in range(6):
        clock.advance(COOLDOWN_S / 2)
        tick(db, settings, gateway, clock)
        for refill_id in panel.refill_states:
            panel.refill_states[refill_id] = "Completed"


@pytest.mark.usefixtures("completed")
@pytest.mark.parametrize("reports", [2, 5])
def test_reports_at_once_open_one_request_and_get_one_refill(
    reports: int, db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    first, *again = [report(db, short_cooldown, clock) for _ in range(reports)]
    assert first.request_id is not None
    assert [later.request_id for later in again] == [None] * (reports - 1)
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER]
    assert len(drops_recorded(db)) == reports


@pytest.mark.usefixtures("completed")
@pytest.mark.parametrize("provider_says", ["Pending", "In progress"])
@pytest.mark.parametrize("reports", [2, 5])
def test_reports_while_the_refill_runs_are_the_same_drop(
    reports: int,
    provider_says: str,
    db: MemoryDatabase,
    short_cooldown: Settings,
    gateway: Gateway,
    panel: ScriptedPanel,
    clock: SettableClock,
) -> None:
    report(db, short_cooldown, clock)
    tick(db, short_cooldown, gateway, clock)  # the refill goes out and is accepted
    assert panel.refills_made == [ORDER]
    panel.refill_states["1"] = provider_says
    clock.advance(5)
    tick(db, short_cooldown, gateway, clock)  # the tracker sees it running
    again = [report(db, short_cooldown, clock) for _ in range(reports - 1)]
    assert [later.request_id for later in again] == [None] * (reports - 1)
    assert all("still running" in (later.reason or "") for later in again), [later.reason for later in again]
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER]
    assert len(requests_opened(db)) == 1
    # Every report is kept, each with what it led to.
    reasons = drops_recorded(db)
    assert len(reasons) == reports and all(reason and "still running" in reason for reason in reasons[1:])


@pytest.mark.usefixtures("completed")
def test_a_report_while_the_refill_answer_is_not_polled_yet_is_the_same_drop(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    report(db, short_cooldown, clock)
    tick(db, short_cooldown, gateway, clock)  # accepted; its refill not polled yet
    assert report(db, short_cooldown, clock).request_id is None
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER]


@pytest.mark.usefixtures("completed")
def test_a_report_while_the_request_is_retried_is_the_same_drop(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    report(db, short_cooldown, clock)
    panel.script(too_many_requests(retry_after=120))
    tick(db, short_cooldown, gateway, clock)  # refused with 429: the request waits, open
    again = report(db, short_cooldown, clock)
    assert again.request_id is None and "already open" in (again.reason or "")
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER]


@pytest.mark.usefixtures("completed")
def test_a_report_after_the_refill_ended_gets_one_more_at_the_cooldowns_end(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    report(db, short_cooldown, clock)
    sent_at = clock()
    tick(db, short_cooldown, gateway, clock)
    panel.refill_states["1"] = "Completed"
    clock.advance(60)
    tick(db, short_cooldown, gateway, clock)  # the tracker sees it Completed
    later = report(db, short_cooldown, clock)
    assert later.request_id is not None and "cool-down" in (later.reason or "")
    # Reports until the cool-down ends join the waiting request.
    assert report(db, short_cooldown, clock).request_id is None
    clock.set(sent_at + timedelta(seconds=COOLDOWN_S - 60))
    tick(db, short_cooldown, gateway, clock)
    assert panel.refills_made == [ORDER], "nothing goes out before the cool-down ends"
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER, ORDER]
    [_, waited] = requests_opened(db)
    assert waited.state == "accepted"


@pytest.mark.usefixtures("completed")
@pytest.mark.parametrize("provider_says", ["Rejected", "Canceled"])
def test_a_refill_the_provider_refused_has_ended_too(
    provider_says: str, db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    report(db, short_cooldown, clock)
    tick(db, short_cooldown, gateway, clock)
    panel.refill_states["1"] = provider_says
    clock.advance(60)
    tick(db, short_cooldown, gateway, clock)
    assert report(db, short_cooldown, clock).request_id is not None
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER, ORDER]


@pytest.mark.usefixtures("completed")
def test_a_report_after_the_cooldown_ended_is_sent_at_once(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    report(db, short_cooldown, clock)
    tick(db, short_cooldown, gateway, clock)
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    later = report(db, short_cooldown, clock)
    assert later.request_id is not None and later.reason is None
    tick(db, short_cooldown, gateway, clock)
    assert panel.refills_made == [ORDER, ORDER]


@pytest.mark.usefixtures("completed")
def test_a_refill_whose_answer_was_lost_counts_as_running_through_its_cooldown(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    report(db, short_cooldown, clock)
    panel.script(cut_after_acting())
    tick(db, short_cooldown, gateway, clock)  # the panel made the refill; the answer was lost
    [request] = requests_opened(db)
    assert request.final and request.state == "gave_up"
    clock.advance(COOLDOWN_S / 2)
    inside = report(db, short_cooldown, clock)
    assert inside.request_id is None and "answer" in (inside.reason or "")
    past_the_cooldown(db, short_cooldown, gateway, panel, clock)
    assert panel.refills_made == [ORDER]
    # Once its cool-down is over, a report is a new drop, sent at once.
    assert report(db, short_cooldown, clock).request_id is not None
    tick(db, short_cooldown, gateway, clock)
    assert panel.refills_made == [ORDER, ORDER]


@pytest.mark.usefixtures("completed")
def test_a_report_after_the_window_closed_is_recorded_and_opens_nothing(
    db: MemoryDatabase, short_cooldown: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock
) -> None:
    clock.advance(31 * 86400)
    late = report(db, short_cooldown, clock)
    assert (late.eligible, late.request_id) == (False, None)
    assert "window" in (late.reason or "")
    assert requests_opened(db) == [] and len(drops_recorded(db)) == 1
