"""The outbox against a real shop endpoint over HTTP and a real database: a slow shop
gets each event once, one order's events arrive in order, and `tracker events resend`
puts events back."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select, update

from tests.integration.helpers import add_provider, cli_runner, print_figures, running_tracker, shop_client
from tests.support.databases import SERVER_DATABASES
from tests.support.processes import wait_until
from tests.support.skewed_clock import run_python
from tests.support.soft_limit import soft_limit_after
from tests.support.shop_endpoint import ShopEndpoint
from tracker.core.clock import utcnow
from tracker.config import get_settings, reset_settings
from tracker.db.clock import database_now
from tracker.db.models import Order, OutboxEvent
from tracker.db.session import unit_of_work
from tracker.core.outbox_events import NewEvent
from tracker.orders.enqueue import track_orders
from tracker.outbox.delivery import (
    DELIVERIES_IN_FLIGHT,
    DELIVERY_BATCH,
    Sinks,
    claim_due_events,
    deliver_claimed,
    delivery_lease,
    record_events,
)

pytestmark = pytest.mark.integration

SECRET = "whsec-outbox-5e1a"


def use_shop(monkeypatch: pytest.MonkeyPatch, shop: ShopEndpoint, **extra: str) -> dict[str, str]:
    """Point this process (and the returned environment, for workers) at the shop."""
    values = {"TRACKER_WEBHOOK_URL": shop.url, "TRACKER_WEBHOOK_SECRET": SECRET, **extra}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return values


def record(count: int, *, order_id: int | None = None, at: datetime | None = None) -> list[str]:
    """Record ``count`` events through the real outbox path; their IDs, oldest first."""
    start = at or utcnow()
    events = []
    for index in range(count):
        event_id = str(uuid.uuid4())
        created = start + timedelta(milliseconds=index)
        events.append(
            NewEvent(event_id, "test.ping", None, order_id, created, {"id": event_id, "type": "test.ping", "n": index})
        )
    with unit_of_work() as session:
        record_events(session, get_settings(), events)
    return [event.event_id for event in events]


def undelivered() -> int:
    with unit_of_work() as session:
        return int(session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.final.is_(False))) or 0)


def run_outbox(sinks: Sinks, now: datetime) -> None:
    """One dispatcher tick and its delivery tasks, in this process, at ``now``."""
    for claim in claim_due_events(get_settings(), now):
        deliver_claimed(claim.claim_id, claim.row_ids, sinks, lambda: now)


@pytest.fixture
def order_row_id(tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    # Nothing listens on port 9: the provider is never called here.
    add_provider("panel", "http://127.0.0.1:9/api/v2", monkeypatch)
    with unit_of_work() as session:
        track_orders(session, "panel", [4242], now=utcnow())
    with unit_of_work() as session:
        return int(session.scalar(select(Order.id).where(Order.external_id == 4242)) or 0)


@pytest.mark.slow  # about 19 s here (each database)
def test_a_slow_shop_gets_each_event_once(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each POST takes 0.5 s, a delivery task gets up to 50 events, the lease is 6 s: one
    task cannot deliver its batch within its lease. No event may be POSTed twice."""
    with ShopEndpoint(delay_s=0.5) as shop:
        env = dict(tracker_env, **use_shop(monkeypatch, shop, TRACKER_LEASE_SECONDS="6", TRACKER_WEBHOOK_TIMEOUT="1.5"))
        ids = record(24)
        with running_tracker(env, tmp_path / "logs"):
            wait_until(lambda: undelivered() == 0, timeout=120, what="every event delivered")
        posts = Counter(post.event_id for post in shop.posts)
    twice = sorted(event_id for event_id, count in posts.items() if count > 1)
    print_figures(
        f"outbox slow shop {tracker_env['TRACKER_DATABASE_URL'].split(':')[0].split('+')[0]}",
        {"events": len(ids), "posts": sum(posts.values()), "events_posted_twice_or_more": len(twice)},
    )
    assert set(posts) == set(ids)
    assert not twice, f"{len(twice)} of {len(ids)} events POSTed more than once"


def test_a_backlog_drains_at_the_workers_pace_not_beats(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No beat: one dispatch hands out DELIVERIES_IN_FLIGHT batches, and each delivery task
    that took a full batch asks for the next dispatch as it ends, so a backlog of twice
    that many batches is delivered without waiting for any tick."""
    with ShopEndpoint() as shop:
        env = dict(tracker_env, **use_shop(monkeypatch, shop))
        ids = record(2 * DELIVERIES_IN_FLIGHT * DELIVERY_BATCH)
        with running_tracker(env, tmp_path / "logs", beat=False):
            shop_client(broker_url).send_task("tracker.dispatch_outbox")
            wait_until(lambda: undelivered() == 0, timeout=60, what="the whole backlog delivered without a tick")
    assert set(shop.accepted_ids()) == set(ids)


def test_one_orders_events_reach_the_shop_in_order(
    tracker_env: dict[str, str], order_row_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ShopEndpoint() as shop:
        use_shop(monkeypatch, shop)
        first, second, third = record(3, order_id=order_row_id)
        [other] = record(1)
        shop.refuse(first)
        sinks = Sinks(get_settings(), send_task=None)
        now = utcnow()
        for _ in range(10):
            run_outbox(sinks, now)
            if not undelivered():
                break
            now += timedelta(hours=2)
        posts = shop.posts
    assert undelivered() == 0
    sequence = [(post.event_id, post.accepted) for post in posts]
    first_accepted = sequence.index((first, True))
    assert sequence[0] == (first, False) or sequence[1] == (first, False), sequence
    assert not {second, third} & {event_id for event_id, _ in sequence[:first_accepted]}, (
        "a later event of the order was POSTed before the first was delivered"
    )
    assert [event_id for event_id in shop.accepted_ids() if event_id != other] == [first, second, third]
    # Another order's (here: no order's) event is not held back by this order's.
    assert sequence.index((other, True)) < first_accepted


def test_events_resend_puts_ended_events_back(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli_runner(capsys)

    with ShopEndpoint() as shop:
        use_shop(monkeypatch, shop)
        now = utcnow()
        [old_delivered] = record(1, at=now - timedelta(days=2))
        delivered, failed, pending = record(3, at=now - timedelta(minutes=30))
        with unit_of_work() as session:
            ended = {"final": True, "claim_id": None, "attempts": 7}
            session.execute(
                update(OutboxEvent).where(OutboxEvent.event_id.in_([old_delivered, delivered])).values(delivered_at=now, **ended)
            )
            session.execute(
                update(OutboxEvent).where(OutboxEvent.event_id == failed).values(failed_at=now, last_error="HTTP 503", **ended)
            )
            session.execute(update(OutboxEvent).where(OutboxEvent.event_id == pending).values(next_attempt_at=now + timedelta(hours=1)))

        def state() -> dict[str, tuple[bool, int, bool, bool]]:
            with unit_of_work() as session:
                rows = session.execute(select(OutboxEvent)).scalars().all()
                return {
                    row.event_id: (row.final, row.attempts, row.failed_at is not None, row.next_attempt_at <= utcnow())
                    for row in rows
                }

        before = state()
        # Bad --since: a clear error, exit 2, nothing changed.
        for bad in ("yesterday", "2h30", "3x", "2024-13-45"):
            code, out, err = run("events", "resend", "--since", bad)
            assert code == 2, (bad, out, err)
            assert f"--since {bad!r}" in err and "ISO 8601" in err, err
        assert state() == before

        code, out, _ = run("events", "resend", "--failed")
        assert (code, out.strip()) == (0, "resent 1 event")
        assert state()[failed] == (False, 0, False, True)
        assert state()[delivered] == before[delivered]

        # Without --failed, delivered events come back too; --since keeps older ones out.
        code, out, _ = run("events", "resend", "--since", "2h")
        assert (code, out.strip()) == (0, "resent 1 event")
        assert state()[delivered] == (False, 0, False, True)
        assert state()[old_delivered] == before[old_delivered]
        assert state()[pending] == before[pending], "an event still being retried is left alone"

        code, out, _ = run("events", "resend", "--since", (now - timedelta(days=3)).isoformat())
        assert (code, out.strip()) == (0, "resent 1 event")

        # Resent events are delivered again by the ordinary path.
        run_outbox(Sinks(get_settings(), send_task=None), utcnow())
        assert sorted(shop.accepted_ids()) == sorted([old_delivered, delivered, failed])


def skewed_task(offset_seconds: float, call: str) -> str:
    """Run one outbox task in a process whose wall clock is ``offset_seconds`` off, as a
    worker on another host would; what it returned."""
    code = f"import tracker.worker.app\nfrom tracker.outbox.tasks import dispatch_outbox, deliver_events\nprint({call})\n"
    return run_python(code, offset_seconds).strip()


def claimed_by() -> dict[str, int | None]:
    with unit_of_work() as session:
        return {event_id: claim_id for event_id, claim_id in session.execute(select(OutboxEvent.event_id, OutboxEvent.claim_id))}


@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_a_worker_whose_clock_is_ahead_does_not_reclaim_events_another_holds(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases are the database's: a host a minute ahead sees another host's lease as still
    running (the delivery lease here is about 30 s)."""
    with ShopEndpoint() as shop:
        use_shop(monkeypatch, shop)
        record(3)
        with unit_of_work() as session:
            held = claim_due_events(get_settings(), database_now(session))
        assert sum(len(claim.row_ids) for claim in held) == 3
        before = claimed_by()
        assert skewed_task(60, "dispatch_outbox()") == "0"
        assert claimed_by() == before


@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_a_worker_whose_clock_is_behind_posts_nothing_once_the_lease_has_ended(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery task that starts after its lease ended (by the database's clock) hands
    its events back unposted, however much lease its own clock thinks is left: another
    host may hold them by now."""
    with ShopEndpoint() as shop:
        use_shop(monkeypatch, shop)
        with unit_of_work() as session:
            database_time = database_now(session)
        lease = timedelta(seconds=delivery_lease(get_settings()))
        record(2, at=database_time - lease - timedelta(seconds=10))
        # Claimed a lease and five seconds ago: the lease has just ended.
        [claim] = claim_due_events(get_settings(), database_time - lease - timedelta(seconds=5))
        result = skewed_task(-60, f"deliver_events({claim.claim_id}, {claim.row_ids!r})")
        assert shop.posts == [], result
        assert set(claimed_by().values()) == {None}, "handed back"


def outbox_rows() -> dict[str, OutboxEvent]:
    with unit_of_work() as session:
        return {row.event_id: row for row in session.scalars(select(OutboxEvent))}


def database_clock_now() -> datetime:
    with unit_of_work() as session:
        return database_now(session)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_delivery_task_starts_no_post_it_cannot_finish_before_its_soft_limit(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A POST may take up to its budget (here 1 s to connect, 1.5 s for the answer and 1 s
    of margin: 3.5 s); the shop answers each in 1 s; the soft limit comes after 6 s. The
    task POSTs while a whole POST still fits, hands the rest back due now, and ends
    before the limit: every event the shop took is marked delivered, none is sent twice."""
    with ShopEndpoint(delay_s=1.0) as shop:
        # Provider calls short enough for the 6 s limit (the settings refuse it otherwise).
        use_shop(monkeypatch, shop, TRACKER_WEBHOOK_TIMEOUT="1.5", TRACKER_LEASE_SECONDS="20",
                 TRACKER_TASK_SOFT_TIME_LIMIT="6", TRACKER_TASK_TIME_LIMIT="9", TRACKER_HTTP_CONNECT_TIMEOUT="1",
                 TRACKER_HTTP_READ_TIMEOUT="1", TRACKER_HTTP_DEADLINE="2")
        ids = record(8)
        [claim] = claim_due_events(get_settings(), database_clock_now())
        started = time.monotonic()
        with soft_limit_after(6):
            deliver_claimed(claim.claim_id, claim.row_ids, Sinks(get_settings(), send_task=None), database_clock_now)
        elapsed = time.monotonic() - started
        rows = outbox_rows()
        taken = shop.accepted_ids()
    assert elapsed < 6
    assert 1 <= len(taken) < len(ids)
    assert all(rows[event_id].delivered_at is not None for event_id in taken), "the shop has it: delivered"
    rest = [rows[event_id] for event_id in ids if event_id not in taken]
    assert all(row.claim_id is None and row.attempts == 0 for row in rest), "handed back untried"
    assert all(row.next_attempt_at <= database_clock_now() for row in rest), "due now"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_soft_limit_mid_post_stops_the_delivery_task(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit lands while the first POST waits for the shop: the task stops there (it
    is not taken for a failed POST, after which the task would POST on), that event counts
    as a failed attempt and the others go back due now."""
    with ShopEndpoint(delay_s=1.0) as shop:
        use_shop(monkeypatch, shop, TRACKER_WEBHOOK_TIMEOUT="5")
        first, *others = record(3)
        [claim] = claim_due_events(get_settings(), database_clock_now())
        with pytest.raises(SoftTimeLimitExceeded), soft_limit_after(0.4):
            deliver_claimed(claim.claim_id, claim.row_ids, Sinks(get_settings(), send_task=None), database_clock_now)
        time.sleep(1.5)  # the shop finishes the POST it was given
        posted = [post.event_id for post in shop.posts]
        rows = outbox_rows()
    assert posted == [first]
    assert (rows[first].attempts, rows[first].claim_id, rows[first].delivered_at) == (1, None, None)
    assert rows[first].next_attempt_at > database_clock_now(), "after the failure back-off"
    assert all((rows[event_id].attempts, rows[event_id].claim_id) == (0, None) for event_id in others)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_one_outbox_dispatch_at_a_time(tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs at once (beat's tick beside a finished delivery's follow-up, on two
    workers) would each count the deliveries out before the other's claims commit, and
    together hand out twice the cap: a run that finds another running hands out nothing."""
    import tracker.worker.app  # noqa: F401 - the tasks' Celery app
    from tracker.outbox.tasks import dispatch_outbox
    from tracker.redis_clients import coordination

    with ShopEndpoint() as shop:
        use_shop(monkeypatch, shop)
        record(3)
        running = coordination().lock("tracker:lock:dispatch-outbox", timeout=30)
        assert running.acquire(blocking=False)
        try:
            assert dispatch_outbox() == 0
            assert set(claimed_by().values()) == {None}
        finally:
            running.release()
        assert dispatch_outbox() == 1
