"""The polling tasks: beat's dispatcher, and the three tasks that call a provider.

``dispatch_polls`` claims due work within each provider's slots and budget
(``tracker.polling.dispatch`` decides what) and enqueues one task per piece after each
committed round. ``poll_status_batch``, ``poll_refill_batch`` and ``request_refill`` run
on the ``tracker.polls`` queue, each holding one poll slot of its provider until it has
made its last call. Thin like every task: IDs in, one engine or use-case call, and the
commit inside it. Arguments are IDs only (Flower shows them), never keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import redis
import redis.lock
from celery import Task, current_app, shared_task
from sqlalchemy import select

from tracker.config import Settings, get_settings
from tracker.db.clock import database_now
from tracker.db.models import Provider
from tracker.db.session import unit_of_work
from tracker.polling.capacity import Capacity, InFlight, TokenBudgets, attempt_token, poll_token
from tracker.polling.dispatch import AttemptWork, PollWork, SlotShare, claim_rounds
from tracker.polling.engine import poll_batch
from tracker.polling.orders import ORDERS
from tracker.polling.refills import REFILLS
from tracker.providers.gateway import shared_gateway
from tracker.refills.attempts import NothingSent, attempt_refill
from tracker.tasks import TrackerTask, enqueue_committed

log = logging.getLogger("tracker.tasks")

_coordination_lock = threading.Lock()
_coordination: redis.Redis | None = None


def coordination() -> redis.Redis:
    """The process's Redis client for locks and counts between workers (the broker's Redis)."""
    global _coordination
    with _coordination_lock:
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
DISPATCH_SOON_EXPIRES = 15


def dispatch_soon() -> None:
    """Run the dispatcher now rather than at the next tick. At most one such run is queued;
    the marker lapses with the message, so a message that expired unread (every pool child
    busy) stops no later one."""
    if coordination().set(QUEUED_KEY, 1, nx=True, ex=DISPATCH_SOON_EXPIRES):
        current_app.send_task("tracker.dispatch_polls", expires=DISPATCH_SOON_EXPIRES)


@shared_task(base=TrackerTask, name="tracker.poll_status_batch")
def poll_status_batch(provider_id: int, claim_id: int, order_ids: list[int]) -> None:
    """Polls one claimed batch of orders: the engine's ``poll_batch`` for ``ORDERS``, as
    ``poll_refill_batch`` is for ``REFILLS`` (the task keeps its public name)."""
    settings = get_settings()
    with holding_slot(provider_id, poll_token(ORDERS.name, claim_id)) as done_calling:
        poll_batch(
            ORDERS, provider_id, claim_id, order_ids,
            settings=settings, gateway=shared_gateway(settings), done_calling=done_calling,
        )


@shared_task(base=TrackerTask, name="tracker.poll_refill_batch")
def poll_refill_batch(provider_id: int, claim_id: int, refill_ids: list[int]) -> None:
    settings = get_settings()
    with holding_slot(provider_id, poll_token(REFILLS.name, claim_id)) as done_calling:
        poll_batch(
            REFILLS, provider_id, claim_id, refill_ids,
            settings=settings, gateway=shared_gateway(settings), done_calling=done_calling,
        )


# Retried automatically only when nothing went out (``NothingSent``). Any later failure
# is not retried: ``attempt_refill`` writes its intent before the call and retries the
# write of a known answer itself, so a re-run could only find an answer to treat as lost.
@shared_task(
    base=TrackerTask,
    name="tracker.request_refill",
    bind=True,
    max_retries=100,
    autoretry_for=(NothingSent,),
    # NothingSent is no DataError: the base's exception to its own rule does not apply.
    dont_autoretry_for=(),
)
def request_refill(
    self: Task[Any, Any], request_id: int, claim_id: int, provider_id: int | None = None
) -> str | None:
    # provider_id: the dispatcher's, for its in-flight count (messages queued before it
    # was added lack it; their entries lapse with the lease).
    settings = get_settings()
    with holding_slot(provider_id, attempt_token(request_id, claim_id)):
        result = attempt_refill(request_id, claim_id, settings=settings, gateway=shared_gateway(settings))
    if result.retry_in is not None:
        # The answer is recorded and the claim kept: retry this same task shortly.
        raise self.retry(countdown=result.retry_in)
    return result.state



@shared_task(base=TrackerTask, name="tracker.dispatch_polls")
def dispatch_polls() -> int:
    """The one dispatcher: every call kind of every provider, within one budget per
    provider per tick (see ``tracker.polling.dispatch``)."""
    settings = get_settings()
    # One dispatcher at a time. Claims stay exclusive without it, but a tick that starts
    # while a long one (a large backlog) is still claiming would skip the rows it has
    # locked and fill batches only partly, and the two would spend one budget twice.
    # The lock lives a few ticks and is renewed every round, so a killed tick blocks the
    # next ones only briefly.
    lock = coordination().lock(
        "tracker:lock:dispatch-polls", timeout=max(DISPATCH_LOCK_TICKS * settings.tick_interval, 10.0)
    )
    redis_client = coordination()
    if not lock.acquire(blocking=False):
        # The run holding the lock goes round once more when it sees this flag...
        redis_client.set(AGAIN_KEY, 1, ex=60)
        # ...unless it let go in the meantime: then this run is the one to go round.
        if not lock.acquire(blocking=False):
            log.debug("dispatch_polls: another run is claiming")
            return 0
    enqueued = 0
    try:
        for _ in range(MAX_PASSES):
            redis_client.delete(AGAIN_KEY, QUEUED_KEY)
            passed = _dispatch_pass(settings, lock)
            if passed is None:
                break
            enqueued += passed
            if not redis_client.exists(AGAIN_KEY):
                break
    finally:
        _release(lock)
    if redis_client.exists(AGAIN_KEY):
        # Provider tasks kept ending through the last pass: another run, queued afresh.
        redis_client.delete(QUEUED_KEY)
        dispatch_soon()
    return enqueued


def _dispatch_pass(settings: Settings, lock: redis.lock.Lock) -> int | None:
    """One pass over every provider; None when the lock was lost."""
    # The database's clock, not this worker's: every worker then agrees on what is due.
    with unit_of_work(read_only=True) as session:
        now = database_now(session)
        provider_ids = list(session.scalars(select(Provider.id)))
    tracked = in_flight()
    share = SlotShare(Capacity(coordination()).poll_slots(), tracked.counts(provider_ids, now))
    budgets = TokenBudgets(coordination(), settings.tick_interval)
    lease_until = now + timedelta(seconds=settings.lease_seconds)
    enqueued = 0

    def start(piece: AttemptWork | PollWork) -> None:
        # In flight from before its message exists, so a task that ends at once finds
        # its entry to end.
        tracked.started(piece.provider_id, _token(piece), lease_until)
        _enqueue(piece)

    for work in claim_rounds(settings, now, share, budgets):
        # claim_rounds yields each round once it is committed: only now may its tasks exist.
        enqueued += enqueue_committed(work, start)
        if not _renew(lock):
            return None
    return enqueued


# Passes one dispatcher run may make when provider tasks end while it runs.
MAX_PASSES = 5


def _token(piece: AttemptWork | PollWork) -> str:
    if isinstance(piece, AttemptWork):
        return attempt_token(piece.request_id, piece.claim_id)
    return poll_token(piece.kind, piece.claim.claim_id)


def _enqueue(piece: AttemptWork | PollWork) -> None:
    if isinstance(piece, AttemptWork):
        request_refill.delay(piece.request_id, piece.claim_id, piece.provider_id)
    elif piece.kind == ORDERS.name:
        poll_status_batch.delay(piece.provider_id, piece.claim.claim_id, piece.claim.row_ids)
    else:
        poll_refill_batch.delay(piece.provider_id, piece.claim.claim_id, piece.claim.row_ids)


DISPATCH_LOCK_TICKS = 3


def _renew(lock: redis.lock.Lock) -> bool:
    try:
        lock.reacquire()
        return True
    except redis.exceptions.LockError:
        # It expired (a round took several ticks, or Redis was flushed): another tick may
        # be claiming now, so this one stops; the next tick goes on where it left off.
        log.warning("dispatch lock lost mid-tick; the next tick carries on")
        return False


def _release(lock: redis.lock.Lock) -> None:
    try:
        lock.release()
    except redis.RedisError as error:
        # Expired (another tick may hold it now) or Redis is gone: either way the lock is
        # not ours to keep, and the tick's own outcome matters more.
        log.warning("dispatch lock not released: %s", type(error).__name__)


