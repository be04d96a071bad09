"""Outbox tasks: claim due events after their commit, then deliver each claimed batch.

Arguments are row IDs only; the payloads stay in the database (Flower shows arguments).
"""

from __future__ import annotations

import threading

import redis
from celery import current_app, shared_task

from tracker.config import get_settings
from tracker.redis_clients import coordination
from tracker.outbox.delivery import DELIVERY_BATCH, Sinks, claim_due_events, deliver_claimed
from tracker.task_base import TrackerTask, enqueue_committed, task_deadline

_sinks_lock = threading.Lock()
_sinks: Sinks | None = None


def sinks() -> Sinks:
    """This process's sinks (the webhook session, the shop's event task)."""
    global _sinks
    with _sinks_lock:
        if _sinks is None:
            _sinks = Sinks(
                get_settings(),
                lambda name, args, queue: current_app.send_task(name, args=args, queue=queue),
            )
        return _sinks


@shared_task(base=TrackerTask, name="tracker.dispatch_outbox")
def dispatch_outbox() -> int:
    # One run at a time: two at once (beat's tick beside a delivery's follow-up) would each
    # count the deliveries out before the other's claims commit, and both fill the cap.
    # A run that finds the lock taken leaves the work to the holder or to the next tick.
    lock = coordination().lock("tracker:lock:dispatch-outbox", timeout=DISPATCH_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return 0
    try:
        return enqueue_committed(
            # The database's clock decides what is due and how long a lease lasts.
            claim_due_events(get_settings()),
            lambda claim: deliver_events.delay(claim.claim_id, claim.row_ids),
        )
    finally:
        try:
            lock.release()
        except redis.RedisError:
            pass  # expired: the claims are committed either way


# Longer than a claim and its enqueueing ever take; a killed run holds it no longer.
DISPATCH_LOCK_SECONDS = 30


@shared_task(base=TrackerTask, name="tracker.deliver_events")
def deliver_events(claim_id: int, event_ids: list[int]) -> dict[str, int]:
    summary = deliver_claimed(claim_id, event_ids, sinks(), deadline=task_deadline())
    if len(event_ids) >= DELIVERY_BATCH:
        # A full batch: more are likely due. The next goes out as this one ends, not at
        # beat's next tick, so a backlog drains at the workers' pace (never more than
        # DELIVERIES_IN_FLIGHT at once).
        dispatch_outbox.delay()
    return {"delivered": summary.delivered, "retrying": summary.retrying, "failed": summary.failed}
