"""The outbox: events for the shop, delivered at least once.

``record_events`` is called inside the transaction that records the change, so an event
exists if and only if its change was committed. Delivery happens later, from beat:
``claim_due_events`` leases due rows (the same claim pattern as polling), and
``deliver_claimed`` POSTs each event, signed (see ``tracker.webhooks``), to
TRACKER_WEBHOOK_URL, and/or sends it as a Celery task named TRACKER_EVENT_TASK. A 2xx
marks it delivered; anything else retries with exponential back-off until
TRACKER_WEBHOOK_MAX_ATTEMPTS, then marks it failed (kept, with its last error, for
inspection). With no sink configured nothing is recorded, so the table cannot grow
unread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import requests
from sqlalchemy import Table, delete, select, update
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.bulk import insert_rows
from tracker.db.claims import Claim, claim_due
from tracker.db.models import OutboxEvent
from tracker.db.session import unit_of_work
from tracker.domain.events import NewEvent
from tracker.domain.scheduling import failure_backoff
from tracker.provider.redact import excerpt
from tracker.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger("tracker.outbox")

_table = cast(Table, OutboxEvent.__table__)
DELIVERY_BATCH = 50
RETRY_BASE_SECONDS = 10.0
RETRY_CAP_SECONDS = 3600.0
KEEP_DELIVERED = timedelta(days=7)


def sink_configured(settings: Settings) -> bool:
    return bool(settings.webhook_url or settings.event_task)


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


def claim_due_events(settings: Settings, now: datetime, max_batches: int = 4) -> list[Claim]:
    with unit_of_work() as session:
        claims = claim_due(
            session,
            OutboxEvent,
            provider_id=None,
            now=now,
            lease_until=now + timedelta(seconds=settings.lease_seconds),
            batch_size=DELIVERY_BATCH,
            max_batches=max_batches,
            due_column="next_attempt_at",
        )
        # Delivered events are kept a week for inspection, then purged a little per tick.
        old = select(OutboxEvent.id).where(
            OutboxEvent.delivered_at.is_not(None), OutboxEvent.delivered_at < now - KEEP_DELIVERED
        ).limit(1000)
        session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(old.scalar_subquery())))
    return claims


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


class Sinks:
    """Where events go. Built once per worker process: one HTTP connection pool."""

    def __init__(self, settings: Settings, send_task: Callable[[str, list[Any], str], None] | None) -> None:
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
                settings.webhook_url, data=body, headers=headers, timeout=settings.webhook_timeout,
                allow_redirects=False,
            )
            if not 200 <= response.status_code < 300:
                raise DeliveryFailed(f"HTTP {response.status_code}: {excerpt(response.content, ())}")
        if settings.event_task and self.send_task is not None:
            self.send_task(settings.event_task, [json.loads(body)], settings.event_queue)


class DeliveryFailed(RuntimeError):
    pass


def deliver_claimed(claim_id: int, event_row_ids: Sequence[int], sinks: Sinks, now: Callable[[], datetime]) -> DeliverySummary:
    with unit_of_work() as session:
        rows = session.execute(
            select(OutboxEvent.id, OutboxEvent.event_id, OutboxEvent.payload, OutboxEvent.attempts).where(
                OutboxEvent.id.in_(event_row_ids), OutboxEvent.claim_id == claim_id, OutboxEvent.final.is_(False)
            ).order_by(OutboxEvent.id)
        ).all()
    delivered = retrying = failed = 0
    for row in rows:
        error: str | None = None
        try:
            sinks.deliver(row.event_id, row.payload.encode())
        except (requests.RequestException, DeliveryFailed, OSError) as exc:
            error = str(exc)[:500]
        except Exception as exc:  # noqa: BLE001 - e.g. the broker for TRACKER_EVENT_TASK is down
            error = f"{type(exc).__name__}: {exc}"[:500]
        moment = now()
        attempts = row.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "claim_id": None, "last_error": error}
        if error is None:
            values.update(final=True, delivered_at=moment)
            delivered += 1
        elif attempts >= sinks.settings.webhook_max_attempts:
            values.update(final=True, failed_at=moment)
            failed += 1
            log.error("event %s not delivered after %d attempts: %s", row.event_id, attempts, error)
        else:
            delay = failure_backoff(attempts, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
            values.update(next_attempt_at=moment + timedelta(seconds=delay))
            retrying += 1
            log.warning("event %s delivery failed (attempt %d): %s", row.event_id, attempts, error)
        # One short transaction per event: a delivered event is marked before the next POST.
        with unit_of_work() as session:
            session.execute(
                update(OutboxEvent).where(OutboxEvent.id == row.id, OutboxEvent.claim_id == claim_id).values(**values)
            )
    return DeliverySummary(delivered, retrying, failed)
