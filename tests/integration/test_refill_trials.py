"""Kill -9 and database errors at each step of a refill attempt: never a duplicate refill.

Each trial claims one refill request and runs the real attempt code against the sim over
HTTP, and fails it at one step:

- ``before_call``: the intent is committed, the ``refill`` call not made yet;
- ``after_call``: the call answered, its answer not written yet;
- ``after_write``: the answer committed.

"kill" runs the attempt in a forked process that SIGKILLs itself at the step (a worker
killed there); "db_error" raises the database's OperationalError there, every time (a
database gone for good; a single failed write is retried, see the last test). Then
the next run does what the dispatcher would once the claim's lease ran out. Afterwards
the sim holds at most one refill for the order, and the request has ended, accepted or
given up with a reason.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from sqlalchemy.exc import OperationalError

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import order_polls, poll_orders, print_figures, refill_attempts
from tracker.core.clock import utcnow
from tracker.config import Settings, get_settings
from tracker.db.models import RefillRequest
from tracker.db.session import dispose_engines, unit_of_work
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL as REFILL
from tracker.sim.server import SimServer
from tracker.providers.catalog import sync_due_catalogs
from tracker.orders.enqueue import track_orders
from tracker.providers.ratelimit import RateLimiter
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.refills.attempts import AnswerNotRecorded, attempt_refill
from tracker.refills.drops import report_drop

pytestmark = pytest.mark.integration

TRIALS = 20
STEPS = ("before_call", "after_call", "after_write")
MODES = ("kill", "db_error")


@pytest.fixture
def panel(tracker_env: dict[str, str]) -> Iterator[tuple[SimServer, Gateway, list[int]]]:
    """A provider with ``TRIALS`` completed orders per step and mode, polled once."""
    with SimServer(dialect="standard", speed=10.0, seed=5, natural_drops=False, refill_too_early_s=0.0) as sim:
        settings = get_settings()
        with unit_of_work() as session:
            upsert_provider(session, ProviderSpec(name="panel", url=sim.url, api_key=TEST_API_KEY, rate_limit=1000), settings, utcnow())
        gateway = Gateway(settings, rate_limiter=None)
        assert sync_due_catalogs(settings, gateway, utcnow())[0].services > 0
        ids = sim.seed_orders(count=TRIALS * len(STEPS) * len(MODES) + 1, service=REFILL, outcome="Completed", age_s=10_000)
        with unit_of_work() as session:
            track_orders(session, "panel", ids, service=REFILL, now=utcnow())
        for work in order_polls(settings, utcnow()):
            poll_orders(work.provider_id, work.claim.claim_id, work.claim.row_ids, settings=settings, gateway=gateway)
        yield sim, gateway, ids
        gateway.close()


def claim_request(order_id: int, settings: Settings) -> tuple[int, int]:
    with unit_of_work() as session:
        report = report_drop(session, "panel", order_id, settings=settings, now=utcnow())
    [work] = [work for work in refill_attempts(settings, utcnow()) if work.request_id == report.request_id]
    return work.request_id, work.claim_id


def failing_at(step: str, mode: str) -> Callable[[str], None]:
    def checkpoint(at: str) -> None:
        if at != step:
            return
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OperationalError("UPDATE refill_requests ...", {}, Exception("injected: the database went away"))

    return checkpoint


def attempt_failing(request_id: int, claim_id: int, step: str, mode: str, gateway: Gateway, settings: Settings) -> None:
    if mode == "db_error":
        with pytest.raises((OperationalError, AnswerNotRecorded)):
            attempt_refill(request_id, claim_id, settings=settings, gateway=gateway, checkpoint=failing_at(step, mode))
        return
    pid = os.fork()
    if pid == 0:  # the child: a worker process killed at the step
        try:
            dispose_engines(close=False)
            child_gateway = Gateway(settings, rate_limiter=None)
            attempt_refill(request_id, claim_id, settings=settings, gateway=child_gateway, checkpoint=failing_at(step, mode))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def run_on(request_id: int, gateway: Gateway, settings: Settings) -> None:
    """What later dispatcher ticks do: claim the request once its lease ran out, attempt."""
    later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
    for _ in range(5):
        claimed = [work for work in refill_attempts(settings, later) if work.request_id == request_id]
        if not claimed:
            return
        for work in claimed:
            attempt_refill(work.request_id, work.claim_id, settings=settings, gateway=gateway, clock=lambda: later)
        later += timedelta(seconds=settings.lease_seconds + 1)


@pytest.mark.slow  # about 25 s here (each database)
def test_no_refill_is_sent_twice_whatever_fails_at_any_step(panel: tuple[SimServer, Gateway, list[int]]) -> None:
    sim, gateway, ids = panel
    settings = replace(get_settings(), refill_retry_base=0.1, refill_retry_cap=0.2)
    orders = iter(ids)
    table: dict[tuple[str, str], Counter[str]] = {}
    trial_orders: dict[tuple[str, str], list[int]] = {}
    for mode in MODES:
        for step in STEPS:
            outcomes: Counter[str] = Counter()
            for _ in range(TRIALS):
                order_id = next(orders)
                trial_orders.setdefault((mode, step), []).append(order_id)
                sim.drop(order_id, 5)
                request_id, claim_id = claim_request(order_id, settings)
                attempt_failing(request_id, claim_id, step, mode, gateway, settings)
                run_on(request_id, gateway, settings)
                with unit_of_work() as session:
                    request = session.get_one(RefillRequest, request_id)
                    assert request.final and request.state in ("accepted", "gave_up"), (mode, step, request.state)
                    assert request.last_message, (mode, step)
                    outcomes[request.state] += 1
            table[(mode, step)] = outcomes
    created = sim.stats()["refills"]
    per_order = Counter(int(entry["order"]) for entry in sim.refill_truth(range(1, created + 1)).values() if entry)
    duplicates = {order_id: count for order_id, count in per_order.items() if count > 1}
    assert duplicates == {}
    for (mode, step), orders_of_trial in trial_orders.items():
        sent = sum(per_order[order_id] for order_id in orders_of_trial)
        # Killed before the call: nothing went out. Later: the one refill went out.
        assert sent == (0 if step == "before_call" else TRIALS), (mode, step, sent)
        print_figures(
            f"refill trials {settings.database_url.split(':')[0]} {mode} at {step}",
            {"trials": TRIALS, "refills_at_sim": sent, "duplicates": 0,
             "accepted": table[(mode, step)]["accepted"], "gave_up": table[(mode, step)]["gave_up"]},
        )


def test_a_single_failed_write_of_an_answer_is_retried_and_the_answer_kept(
    panel: tuple[SimServer, Gateway, list[int]],
) -> None:
    sim, gateway, ids = panel
    settings = get_settings()
    order_id = ids[-1]
    sim.drop(order_id, 5)
    request_id, claim_id = claim_request(order_id, settings)
    failures = iter([True])

    def once(at: str) -> None:
        if at == "after_call" and next(failures, False):
            raise OperationalError("UPDATE ...", {}, Exception("injected: database is locked"))

    report = attempt_refill(request_id, claim_id, settings=settings, gateway=gateway, checkpoint=once)
    assert (report.outcome, report.state) == ("accepted", "accepted")
    assert sim.stats()["refills"] == 1


class _CoolDownFails(RateLimiter):
    """A limiter whose Redis goes away just as a 429's cool-down is stored."""

    def cool_down(self, provider_id: int, seconds: float) -> None:
        raise redis.ConnectionError("injected: Redis went away")


def test_redis_down_under_the_rate_limit_sends_nothing_and_burns_nothing(
    panel: tuple[SimServer, Gateway, list[int]],
) -> None:
    sim, _, ids = panel
    settings = get_settings()
    order_id = ids[-1]
    sim.drop(order_id, 5)
    request_id, claim_id = claim_request(order_id, settings)
    dead_redis = Gateway(settings, RateLimiter.from_url("redis://127.0.0.1:9/0"))
    try:
        report = attempt_refill(request_id, claim_id, settings=settings, gateway=dead_redis)
    finally:
        dead_redis.close()
    assert (report.outcome, report.state) == ("not_sent", "pending")
    assert "refill" not in sim.stats()["actions"]
    with unit_of_work() as session:
        request = session.get_one(RefillRequest, request_id)
        assert not request.final


def test_a_429_is_kept_when_its_cool_down_cannot_be_stored(panel: tuple[SimServer, Gateway, list[int]]) -> None:
    sim, _, ids = panel
    settings = get_settings()
    order_id = ids[-1]
    sim.drop(order_id, 5)
    request_id, claim_id = claim_request(order_id, settings)
    sim.inject_fault("rate_limit", count=1, actions=["refill"], seconds=2)
    gateway = Gateway(settings, _CoolDownFails.from_url(get_settings().broker_url))
    try:
        report = attempt_refill(request_id, claim_id, settings=settings, gateway=gateway)
    finally:
        gateway.close()
    assert (report.outcome, report.state) == ("rate_limited", "pending")
    with unit_of_work() as session:
        assert not session.get_one(RefillRequest, request_id).final
