"""Celery tasks. Each is thin: load IDs, call a use case, commit, then enqueue follow-ups.

Task arguments are IDs only (Flower shows them); never payloads or keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import current_app, shared_task

from tracker.clock import utcnow
from tracker.config import get_settings
from tracker.db.session import unit_of_work
from tracker.metrics import CallMetrics
from tracker.ratelimit import RateLimiter
from tracker.polling.engine import poll_batch
from tracker.polling.capacity import InFlight, poll_token
from tracker.polling.orders import ORDERS
from tracker.usecases import catalog, enqueue
from tracker.usecases.outbox import Sinks, claim_due_events, deliver_claimed
from tracker.usecases.gateway import Gateway
from tracker.worker.base import SHOP_INPUT_ERRORS, InvalidTaskInput, TrackerTask, enqueue_committed

log = logging.getLogger("tracker.tasks")

_gateway_lock = threading.Lock()
_gateway: Gateway | None = None


def gateway() -> Gateway:
    """The worker process's provider gateway (client pool + shared rate limiter)."""
    global _gateway
    with _gateway_lock:
        if _gateway is None:
            settings = get_settings()
            _gateway = Gateway(
                settings,
                RateLimiter.from_url(settings.broker_url),
                CallMetrics.from_url(settings.broker_url),
            )
        return _gateway


_coordination: redis.Redis | None = None


def coordination() -> redis.Redis:
    """The worker process's Redis client for locks between workers (the broker's Redis)."""
    global _coordination
    with _gateway_lock:
        if _coordination is None:
            _coordination = redis.Redis.from_url(
                get_settings().broker_url, socket_timeout=5, socket_connect_timeout=5
            )
        return _coordination


def in_flight() -> InFlight:
    return InFlight(coordination())


@contextmanager
def holding_slot(provider_id: int | None, token: str) -> Iterator[Callable[[], None]]:
    """Ends a provider task's in-flight entry (see ``tracker.polling.capacity``) and has
    the dispatcher lend the freed slot at once: when the task calls the function this
    yields (it has stopped waiting on its provider), or else however the task ends. A
    killed task's entry lapses with its lease instead."""
    ended = False

    def end() -> None:
        nonlocal ended
        if ended or provider_id is None:
            return
        ended = True
        try:
            in_flight().finished(provider_id, token)
            dispatch_soon()
        except redis.RedisError as error:
            # The entry lapses with the lease: the slot is only lent out later.
            log.warning("in-flight entry not ended: %s", type(error).__name__)

    try:
        yield end
    finally:
        end()


# Set while a dispatcher run is queued; and by a run that found another one running, so
# that one goes round once more.
QUEUED_KEY = "tracker:dispatch:queued"
AGAIN_KEY = "tracker:dispatch:again"


def dispatch_soon() -> None:
    """Run the dispatcher now rather than at the next tick. At most one such run is queued;
    the marker lapses with the message, so a message that expired unread (every pool child
    busy) stops no later one."""
    if coordination().set(QUEUED_KEY, 1, nx=True, ex=DISPATCH_SOON_EXPIRES):
        current_app.send_task("tracker.dispatch_polls", expires=DISPATCH_SOON_EXPIRES)


DISPATCH_SOON_EXPIRES = 15


@shared_task(base=TrackerTask, name="tracker.track_orders", bad_input=SHOP_INPUT_ERRORS)
def track_orders(
    provider: str, order_ids: list[int | str], service: int | None = None, quantity: int | None = None
) -> dict[str, Any]:
    if not isinstance(order_ids, list | tuple):
        raise InvalidTaskInput(
            f"order_ids must be a list of order IDs, got {type(order_ids).__name__}"
        )
    with unit_of_work() as session:
        result = enqueue.track_orders(
            session, provider, order_ids, service=service, quantity=quantity, now=utcnow()
        )
    for given, reason in result.rejected[:20]:
        log.warning("rejected order ID %s: %s", given, reason, extra={"provider": result.provider})
    log.info("track_orders %s", result.describe(), extra={"provider": result.provider})
    return {"added": result.added, "already_tracked": result.already_tracked, "rejected": len(result.rejected)}


@shared_task(base=TrackerTask, name="tracker.poll_status_batch")
def poll_status_batch(provider_id: int, claim_id: int, order_ids: list[int]) -> None:
    """Polls one claimed batch of orders: the engine's ``poll_batch`` for ``ORDERS``, as
    ``poll_refill_batch`` is for ``REFILLS`` (the task keeps its public name)."""
    with holding_slot(provider_id, poll_token(ORDERS.name, claim_id)) as done_calling:
        poll_batch(
            ORDERS, provider_id, claim_id, order_ids,
            settings=get_settings(), gateway=gateway(), done_calling=done_calling,
        )


_sinks: Sinks | None = None


def sinks() -> Sinks:
    global _sinks
    with _gateway_lock:
        if _sinks is None:
            from tracker.worker.app import app

            _sinks = Sinks(
                get_settings(), lambda name, args, queue: app.send_task(name, args=args, queue=queue)
            )
        return _sinks


@shared_task(base=TrackerTask, name="tracker.dispatch_outbox")
def dispatch_outbox() -> int:
    return enqueue_committed(
        claim_due_events(get_settings(), utcnow()),
        lambda claim: deliver_events.delay(claim.claim_id, claim.row_ids),
    )


@shared_task(base=TrackerTask, name="tracker.deliver_events")
def deliver_events(claim_id: int, event_ids: list[int]) -> dict[str, int]:
    summary = deliver_claimed(claim_id, event_ids, sinks(), utcnow)
    return {"delivered": summary.delivered, "retrying": summary.retrying, "failed": summary.failed}


@shared_task(base=TrackerTask, name="tracker.check_balances")
def check_balances() -> int:
    return catalog.check_balances(get_settings(), gateway(), utcnow())
