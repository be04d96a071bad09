"""The outbox: events for the shop, delivered at least once.

``record_events`` is called inside the transaction that records the change, so an event
exists if and only if its change was committed. Delivery happens later, from beat:
``claim_due_events`` leases due rows (the same claim pattern as polling), and
``deliver_claimed`` POSTs each event, signed (see ``tracker.outbox.webhooks``), to
TRACKER_WEBHOOK_URL, and/or sends it as a Celery task named TRACKER_EVENT_TASK. A 2xx
marks it delivered; anything else retries with exponential back-off until
TRACKER_WEBHOOK_RETRY_FOR after the event was recorded (see ``next_delivery_attempt``),
then marks it failed (kept, with its last error, for inspection; ``resend_events`` puts
it back). With no sink configured nothing is recorded, so the table cannot grow unread.

Two rules keep deliveries from repeating or overtaking each other:

- a delivery task POSTs only while a whole POST still fits in its lease and before its
  soft time limit; what is left is released, due now, for the next tick. An event whose
  lease ran out is claimed again, and a POST still in flight would then be sent twice;
  a task killed at its hard limit mid-POST would send it twice too;
- one order's events go out in the order they were recorded: an event waits while an
  earlier event of its order is neither delivered nor failed.

Leases and due times are the database's clock (``tracker.db.clock``), never a worker's:
a host whose clock ran a minute ahead would otherwise take every lease another host
holds for ended, and claim its events again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, delete, distinct, func, or_, select, update
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.core.time_limits import Deadline, deadline_or_after, interruptions
from tracker.db.bulk import insert_rows, release_claimed
from tracker.db.claims import Claim, claim_due
from tracker.db.clock import database_clock, database_now
from tracker.db.models import OutboxEvent, Provider
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.core.outbox_events import NewEvent, next_delivery_attempt, provider_alert
from tracker.apiv2.redact import excerpt
from tracker.outbox.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger("tracker.outbox")

_table = cast(Table, OutboxEvent.__table__)
DELIVERY_BATCH = 50
# Delivery tasks queued or running at once, at most. They travel on the `celery` queue,
# which every worker reads before the polls' queue: handed out faster than they end (a
# backlog of events, a slow shop), they would pile up there, keep every pool child busy,
# and leave the dispatcher and the poll tasks waiting until their leases ran out.
DELIVERIES_IN_FLIGHT = 4
KEEP_DELIVERED = timedelta(days=7)
# How soon an event waiting for an earlier event of its order, which a delivery task
# holds right now, looks again.
ORDER_WAIT = timedelta(seconds=10)


def sink_configured(settings: Settings) -> bool:
    return bool(settings.webhook_url or settings.event_task)


def record_provider_alert(
    session: Session,
    settings: Settings,
    provider: Provider,
    kind: str,
    message: str,
    now: datetime,
    **details: Any,
) -> None:
    """An alert about one provider for the shop (``provider.paused``, ``provider.resumed``,
    ``provider.balance_low``), in the same transaction as the change it reports."""
    record_events(
        session,
        settings,
        [provider_alert(provider_id=provider.id, provider_name=provider.name, kind=kind, message=message, at=now, **details)],
    )


def record_events(session: Session, settings: Settings, events: Sequence[NewEvent]) -> None:
    if not events or not sink_configured(settings):
        return
    insert_rows(
        session,
        _table,
        [
            {
                "event_id": event.event_id,
                "kind": event.kind,
                "provider_id": event.provider_id,
                "order_id": event.order_id,
                "payload": json.dumps(event.payload, separators=(",", ":")),
                "created_at": event.created_at,
                "next_attempt_at": event.created_at,
                "attempts": 0,
                "final": False,
            }
            for event in events
        ],
    )


def post_budget(settings: Settings) -> float:
    """Seconds one delivery may take: connecting, waiting for the answer, and a margin for
    the bookkeeping around it (``Settings.webhook_post_seconds``). (The read timeout bounds
    each wait for data: a shop that trickles its answer byte by byte could take longer;
    then the claim is lost, and that is logged, or the soft time limit ends the task and
    the event counts as a failed attempt.)"""
    return settings.webhook_post_seconds


def delivery_lease(settings: Settings) -> float:
    """The lease of a delivery claim: TRACKER_LEASE_SECONDS, but room for two deliveries at
    least, so a task that starts a little late still delivers something."""
    return max(settings.lease_seconds, 2 * post_budget(settings))


def claim_due_events(
    settings: Settings,
    now: datetime | None = None,
    max_batches: int = DELIVERIES_IN_FLIGHT,
    *,
    unit_of_work: UnitOfWork = unit_of_work,
) -> list[Claim]:
    """Lease due events to delivery tasks: up to ``max_batches``, and never so many that
    more than DELIVERIES_IN_FLIGHT claims are held at once (a claim whose task was lost
    stops counting when its lease ends). ``now``: by default the database's clock, the one
    every worker's leases are measured by."""
    with unit_of_work() as session:
        if now is None:
            now = database_now(session)
        held = session.scalar(
            select(func.count(distinct(OutboxEvent.claim_id))).where(
                OutboxEvent.final.is_(False), OutboxEvent.claim_id.is_not(None), OutboxEvent.next_attempt_at > now
            )
        ) or 0
        claims = claim_due(
            session,
            OutboxEvent,
            provider_id=None,
            now=now,
            lease_until=now + timedelta(seconds=delivery_lease(settings)),
            batch_size=DELIVERY_BATCH,
            max_batches=max(0, min(max_batches, DELIVERIES_IN_FLIGHT - int(held))),
            due_column="next_attempt_at",
        )
        # Delivered events are kept a week for inspection, then purged a little per tick.
        # Two statements: MySQL takes no LIMIT in an IN subquery.
        old = session.scalars(
            select(OutboxEvent.id)
            .where(OutboxEvent.delivered_at.is_not(None), OutboxEvent.delivered_at < now - KEEP_DELIVERED)
            .limit(1000)
        ).all()
        if old:
            session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(old)))
    return claims


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


class Sinks:
    """Where events go. Built once per worker process: one HTTP connection pool."""

    def __init__(self, settings: Settings, send_task: Callable[[str, list[Any], str], None] | None) -> None:
        # Imported here, where events are delivered: the CLI records and lists events
        # through this module and needs no HTTP client for that.
        import requests

        self.settings = settings
        self.http = requests.Session()
        self.send_task = send_task

    def deliver(self, event_id: str, body: bytes) -> None:
        """Raise on any failure; return when every configured sink took the event."""
        settings = self.settings
        if settings.webhook_url:
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                EVENT_ID_HEADER: event_id,
                TIMESTAMP_HEADER: str(timestamp),
            }
            if settings.webhook_secret:
                headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, timestamp, body)
            response = self.http.post(
                settings.webhook_url, data=body, headers=headers,
                timeout=(settings.webhook_connect_timeout, settings.webhook_timeout),
                allow_redirects=False,
            )
            if not 200 <= response.status_code < 300:
                raise DeliveryFailed(f"HTTP {response.status_code}: {excerpt(response.content, ())}")
        if settings.event_task and self.send_task is not None:
            self.send_task(settings.event_task, [json.loads(body)], settings.event_queue)


class DeliveryFailed(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class _Held:
    """An event as its delivery task holds it."""

    id: int
    event_id: str
    order_id: int | None
    payload: str
    attempts: int
    created_at: datetime
    resent_at: datetime | None
    lease_until: datetime


def deliver_claimed(
    claim_id: int,
    event_row_ids: Sequence[int],
    sinks: Sinks,
    now: Callable[[], datetime] | None = None,
    *,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> DeliverySummary:
    """POST each claimed event while a whole POST still fits in the claim's lease and
    before ``deadline`` (the task's soft time limit; by default TRACKER_TASK_SOFT_TIME_LIMIT
    from now); the rest go back, due now. ``now``: by default the database's clock."""
    settings = sinks.settings
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    with unit_of_work() as session:
        if now is None:
            now = database_clock(session)
        rows = [
            _Held(*row)
            for row in session.execute(
                select(
                    OutboxEvent.id, OutboxEvent.event_id, OutboxEvent.order_id, OutboxEvent.payload,
                    OutboxEvent.attempts, OutboxEvent.created_at, OutboxEvent.resent_at, OutboxEvent.next_attempt_at,
                ).where(
                    OutboxEvent.id.in_(event_row_ids), OutboxEvent.claim_id == claim_id, OutboxEvent.final.is_(False)
                ).order_by(OutboxEvent.id)
            )
        ]
    budget_seconds = post_budget(settings)
    budget = timedelta(seconds=budget_seconds)
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    # Orders whose next event must wait, and until when (None: soon, a task holds the
    # earlier one): what was pending before this batch, read once, then what this batch
    # did not get delivered.
    blocked = _earlier_pending(claim_id, rows, unit_of_work)
    for index, row in enumerate(rows):
        if now() + budget > row.lease_until or not deadline.allows(budget_seconds):
            _release(claim_id, rows[index:], now(), unit_of_work)
            break
        if row.order_id is not None and row.order_id in blocked:
            _wait_for_earlier(claim_id, row, blocked[row.order_id], now(), unit_of_work)
            continue
        try:
            error = _deliver(sinks, row)
        except interruptions():
            # The soft time limit mid-POST: the shop may or may not have the event. It
            # counts as a failed attempt (sent again after the back-off: the shop knows
            # events by ID), the events not tried yet go back due now, and the task stops
            # here instead of POSTing on until the hard limit kills it mid-POST.
            _interrupted(claim_id, row, rows[index + 1 :], now(), settings, unit_of_work)
            raise
        outcome, values = _attempt_values(row, error, now(), settings)
        counts[outcome] += 1
        if outcome == "retrying" and row.order_id is not None:
            # Its order's later events wait until it is tried again. One that failed for
            # good will never arrive: nothing waits for it.
            blocked[row.order_id] = values["next_attempt_at"]
        # One short transaction per event: a delivered event is marked before the next POST.
        with unit_of_work() as session:
            marked = _mark(session, claim_id, row, values)
        if not marked:
            log.warning("event %s: its claim was lost during the delivery; it may be delivered again", row.event_id)
    return DeliverySummary(counts["delivered"], counts["retrying"], counts["failed"])


def _attempt_values(row: _Held, error: str | None, moment: datetime, settings: Settings) -> tuple[str, dict[str, Any]]:
    """How one attempt ended ("delivered", "retrying" or "failed") and what to write."""
    values: dict[str, Any] = {"attempts": row.attempts + 1, "claim_id": None, "last_error": error}
    if error is None:
        values.update(final=True, delivered_at=moment)
        return "delivered", values
    following = next_delivery_attempt(
        since=row.resent_at or row.created_at,
        attempts=row.attempts + 1,
        now=moment,
        retry_for=timedelta(seconds=settings.webhook_retry_for),
        max_attempts=settings.webhook_max_attempts,
    )
    if following is None:
        values.update(final=True, failed_at=moment)
        log.error("event %s not delivered after %d attempts: %s", row.event_id, row.attempts + 1, error)
        return "failed", values
    values.update(next_attempt_at=following)
    log.warning("event %s delivery failed (attempt %d): %s", row.event_id, row.attempts + 1, error)
    return "retrying", values


def _mark(session: Session, claim_id: int, row: _Held, values: dict[str, Any]) -> bool:
    """Write how the attempt ended, if the claim is still this task's."""
    return bool(
        session.connection().execute(
            update(_table).where(_table.c.id == row.id, _table.c.claim_id == claim_id).values(**values)
        ).rowcount
    )


INTERRUPTED = "interrupted by the task's soft time limit while posting"


def _interrupted(
    claim_id: int, row: _Held, untried: Sequence[_Held], moment: datetime, settings: Settings, unit_of_work: UnitOfWork
) -> None:
    _, values = _attempt_values(row, INTERRUPTED, moment, settings)
    with unit_of_work() as session:
        _mark(session, claim_id, row, values)
        release_claimed(
            session, _table, claim_id, [held.id for held in untried], due_at=moment, due_column="next_attempt_at"
        )


def _deliver(sinks: Sinks, row: _Held) -> str | None:
    """The delivery's error, or None when every sink took the event. An interruption (the
    soft time limit) is raised, never taken for the delivery's failure."""
    import requests

    try:
        sinks.deliver(row.event_id, row.payload.encode())
    except interruptions():
        raise
    except (requests.RequestException, DeliveryFailed, OSError) as exc:
        return str(exc)[:500]
    except Exception as exc:  # noqa: BLE001 - e.g. the broker for TRACKER_EVENT_TASK is down
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def _release(claim_id: int, rows: Sequence[_Held], moment: datetime, unit_of_work: UnitOfWork) -> None:
    """Hand back events this task has no time left for: due now, for the next tick."""
    with unit_of_work() as session:
        release_claimed(session, _table, claim_id, [row.id for row in rows], due_at=moment, due_column="next_attempt_at")
    log.info("released %d events: their lease or the task's time limit ends before another delivery could finish", len(rows))


def _earlier_pending(claim_id: int, rows: Sequence[_Held], unit_of_work: UnitOfWork) -> dict[int, datetime | None]:
    """The orders of ``rows`` with an earlier event neither delivered nor failed (outside
    this claim), and when that one is next tried (None while another task holds it): one
    query for the whole batch."""
    first_of_order: dict[int, int] = {}
    for row in rows:
        if row.order_id is not None:
            first_of_order.setdefault(row.order_id, row.id)
    if not first_of_order:
        return {}
    blocked: dict[int, datetime | None] = {}
    with unit_of_work() as session:
        for order_id, event_id, next_attempt_at, holder in session.execute(
            select(OutboxEvent.order_id, OutboxEvent.id, OutboxEvent.next_attempt_at, OutboxEvent.claim_id)
            .where(
                OutboxEvent.order_id.in_(list(first_of_order)),
                OutboxEvent.final.is_(False),
                OutboxEvent.id < max(first_of_order.values()),
                or_(OutboxEvent.claim_id.is_(None), OutboxEvent.claim_id != claim_id),
            )
            .order_by(OutboxEvent.id)
        ):
            if order_id is not None and event_id < first_of_order[order_id] and order_id not in blocked:
                blocked[order_id] = None if holder is not None else next_attempt_at
    return blocked


def _wait_for_earlier(
    claim_id: int, row: _Held, earlier_due: datetime | None, moment: datetime, unit_of_work: UnitOfWork
) -> None:
    """Hand the event back to wait for an earlier event of its order: due when that one is
    next tried, or soon if a task holds it now."""
    again = moment + ORDER_WAIT if earlier_due is None else max(moment, earlier_due)
    with unit_of_work() as session:
        release_claimed(session, _table, claim_id, [row.id], due_at=again, due_column="next_attempt_at")


def resend_events(session: Session, now: datetime, *, failed_only: bool, since: datetime | None) -> int:
    """Put ended events back to be delivered again, now: those that failed for good
    (``failed_only``) or also those delivered, recorded at or after ``since`` if given.
    Events still being retried are left alone. Returns how many were put back."""
    conditions: list[ColumnElement[bool]] = [_table.c.final.is_(True)]
    if failed_only:
        conditions.append(_table.c.failed_at.is_not(None))
    if since is not None:
        conditions.append(_table.c.created_at >= since)
    result = session.connection().execute(
        update(_table)
        .where(*conditions)
        .values(
            final=False, next_attempt_at=now, claim_id=None, attempts=0, last_error=None,
            delivered_at=None, failed_at=None, resent_at=now,
        )
    )
    return int(result.rowcount or 0)
