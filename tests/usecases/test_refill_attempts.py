"""A refill attempt: its intent is written before the call, and a call whose answer was
not seen is never made again."""

from __future__ import annotations

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from tests.support.soft_limit import soft_limit_after
from tests.usecases.helpers import completed_with_refill
from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline
from tracker.db.models import Provider, RefillAttempt, RefillRequest
from tracker.polling.dispatch import AttemptWork, claim_all
from tracker.providers.gateway import Gateway
from tracker.providers.ratelimit import RateLimitBusy
from tracker.refills.attempts import AttemptReport, attempt_refill
from tracker.refills.drops import report_drop
from tracker.testing import InMemoryCallMetrics, MemoryDatabase, ScriptedPanel, SettableClock, cut_after_acting, held_then_answered

ORDER = 501
SERVICE = 7


class WorkerKilled(BaseException):
    """Stands for kill -9 at a checkpoint: nothing after it runs."""


@pytest.fixture
def drop_reported(db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, provider_id: int) -> int:
    """A completed order whose drop the shop reported: one refill request, due now."""
    completed_with_refill(db, settings, gateway, panel, clock, provider_id, ORDER, SERVICE)
    with db.unit_of_work() as session:
        report = report_drop(session, "panel", ORDER, settings=settings, now=clock())
    assert report.request_id is not None
    return report.request_id


def attempt_due(db: MemoryDatabase, settings: Settings, gateway: Gateway, clock: SettableClock, **options: object) -> list[AttemptReport]:
    work = claim_all(settings, clock(), unit_of_work=db.unit_of_work)
    return [
        attempt_refill(
            piece.request_id, piece.claim_id, settings=settings, gateway=gateway, clock=clock,
            unit_of_work=db.unit_of_work, **options,  # type: ignore[arg-type]
        )
        for piece in work
        if isinstance(piece, AttemptWork)
    ]


def attempts(db: MemoryDatabase, request_id: int) -> list[str]:
    with db.unit_of_work(read_only=True) as session:
        return list(session.scalars(select(RefillAttempt.outcome).where(RefillAttempt.request_id == request_id)))


def test_the_attempt_is_written_before_the_call_goes_out(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, drop_reported: int,
) -> None:
    seen_before_call: list[list[str]] = []

    def checkpoint(step: str) -> None:
        if step == "before_call":
            assert panel.refills_made == []
            seen_before_call.append(attempts(db, drop_reported))

    [report] = attempt_due(db, settings, gateway, clock, checkpoint=checkpoint)
    assert seen_before_call == [["sent"]]
    assert report.state == "accepted"
    assert panel.refills_made == [ORDER]
    assert attempts(db, drop_reported) == ["accepted"]


def test_a_call_cut_off_after_the_panel_acted_is_not_made_again(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, drop_reported: int,
) -> None:
    panel.script(cut_after_acting())
    attempt_due(db, settings, gateway, clock)
    assert panel.refills_made == [ORDER]
    # Long past every retry, lease and cool-down: later ticks send nothing more.
    for _ in range(5):
        clock.advance(2 * 86400)
        attempt_due(db, settings, gateway, clock)
    assert panel.actions().count("refill") == 1
    assert panel.refills_made == [ORDER]


def test_a_worker_killed_before_writing_the_answer_leaves_the_refill_unsent_again(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock, drop_reported: int,
) -> None:
    def killed_after_the_call(step: str) -> None:
        if step == "after_call":
            raise WorkerKilled

    with pytest.raises(WorkerKilled):
        attempt_due(db, settings, gateway, clock, checkpoint=killed_after_the_call)
    assert attempts(db, drop_reported) == ["sent"]

    # The next tick after the lease: the answer is counted as lost, nothing is sent.
    clock.advance(settings.lease_seconds + 1)
    [report] = attempt_due(db, settings, gateway, clock)
    assert report.outcome == "answer_lost"
    assert panel.actions().count("refill") == 1
    with db.unit_of_work(read_only=True) as session:
        request = session.get_one(RefillRequest, drop_reported)
        assert request.final and request.state == "gave_up"


def test_a_refill_call_abandoned_at_the_soft_limit_counts_against_the_provider(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel, clock: SettableClock,
    drop_reported: int, provider_id: int,
) -> None:
    """The panel holds the refill call past every timeout; the soft limit abandons it.
    The attempt stays sent (its answer is unknown: never sent again), and the hang counts
    for the provider's circuit as the timeout it is."""
    panel.script(held_then_answered(30))
    try:
        with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.5):
            attempt_due(db, settings, gateway, clock)
    finally:
        panel.release_held()
    assert attempts(db, drop_reported) == ["sent"]
    with db.unit_of_work(read_only=True) as session:
        assert session.get_one(Provider, provider_id).consecutive_failures == 1


class SlotInFiveSeconds:
    """A rate limit whose next slot for the provider is 5 s away."""

    def acquire(self, provider_id: int, rate: float, *, max_wait: float = 10.0) -> float:
        if max_wait < 5.0:
            raise RateLimitBusy(provider_id, 5.0)
        return 5.0

    def cool_down(self, provider_id: int, seconds: float) -> None:
        return None


def test_a_refill_is_not_sent_when_its_wait_and_call_would_outlast_the_soft_limit(
    db: MemoryDatabase, settings: Settings, panel: ScriptedPanel, clock: SettableClock, drop_reported: int,
) -> None:
    """A refill is not idempotent: one abandoned at the soft limit stays sent with its
    answer unknown, and blocks the order's next refill for its cool-down. So it goes out
    only when the rate limit's wait and one whole try fit before the limit: here 2 s are
    left beyond the try, and the slot is 5 s away."""
    gateway = Gateway(settings, SlotInFiveSeconds(), InMemoryCallMetrics(), transport=panel)
    deadline = Deadline.after(settings.provider_try_seconds + WRITE_MARGIN_SECONDS + 2.0)
    try:
        [report] = attempt_due(db, settings, gateway, clock, deadline=deadline)
    finally:
        gateway.close()
    assert "refill" not in panel.actions()
    assert report.outcome == "not_sent"
