"""A dispatcher run: the lock that keeps runs from overlapping, and the passes it makes.

Beat starts a run every tick, and a provider task that ends asks for one
(``tracker.polling.slots.dispatch_soon``). One run at a time holds the lock; a run that
finds it taken leaves a flag, and the holder goes round once more while the flag is set,
so no wake-up is lost. Each pass claims rounds through ``claim_rounds`` and hands each
committed piece to the caller's ``send``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import redis
import redis.lock
from sqlalchemy import select

from tracker.config import Settings
from tracker.core.time_limits import Deadline
from tracker.db.clock import database_now
from tracker.db.models import Provider
from tracker.db.session import unit_of_work
from tracker.polling.capacity import Capacity, LastServed, TokenBudgets, attempt_token, poll_token
from tracker.polling.dispatch import AttemptWork, PollWork, SlotShare, claim_rounds
from tracker.polling.slots import AGAIN_KEY, QUEUED_KEY, dispatch_soon, in_flight
from tracker.providers.key_probe import key_probe_due
from tracker.redis_clients import coordination
from tracker.task_base import enqueue_committed

log = logging.getLogger("tracker.task_base")


def run_dispatcher(
    settings: Settings,
    send: Callable[[AttemptWork | PollWork], object],
    deadline: Deadline | None = None,
    *,
    send_key_probe: Callable[[], object] | None = None,
) -> int:
    """One dispatcher run, and the rounds it claims: every call kind of every provider,
    within each provider's slots and budget (see ``tracker.polling.dispatch``). ``send``
    enqueues one piece's task; it is called only once the piece's claim is committed.
    ``deadline``: the task's soft time limit; no round starts that might outlast it.
    ``send_key_probe``: enqueues the key probe task, called once when a paused provider's
    key probe is due (the task claims its probes itself). Returns how many poll and
    refill tasks were sent."""
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
        for turn in range(MAX_PASSES):
            redis_client.delete(AGAIN_KEY, QUEUED_KEY)
            passed = _dispatch_pass(settings, lock, send, deadline, send_key_probe if turn == 0 else None)
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


def _dispatch_pass(
    settings: Settings,
    lock: redis.lock.Lock,
    send: Callable[[AttemptWork | PollWork], object],
    deadline: Deadline | None,
    send_key_probe: Callable[[], object] | None,
) -> int | None:
    """One pass over every provider; None when the lock was lost."""
    # The database's clock, not this worker's: every worker then agrees on what is due.
    with unit_of_work(read_only=True) as session:
        now = database_now(session)
        provider_ids = list(session.scalars(select(Provider.id)))
        # Key probes are calls too: looked for here rather than by a beat entry of their
        # own, whose task an idle host paid for four times a minute to find nothing due.
        probe_due = send_key_probe is not None and key_probe_due(session, now)
    if send_key_probe is not None and probe_due:
        send_key_probe()
    tracked = in_flight()
    served = LastServed(coordination())
    share = SlotShare(Capacity(coordination()).poll_slots(), tracked.counts(provider_ids, now), served.load())
    budgets = TokenBudgets(coordination(), settings.tick_interval)
    lease_until = now + timedelta(seconds=settings.lease_seconds)
    enqueued = 0

    def start(piece: AttemptWork | PollWork) -> None:
        # In flight from before its message exists, so a task that ends at once finds
        # its entry to end.
        tracked.started(piece.provider_id, _token(piece), lease_until)
        send(piece)

    for work in claim_rounds(settings, now, share, budgets, deadline=deadline):
        # claim_rounds yields each round once it is committed: only now may its tasks exist.
        enqueued += enqueue_committed(work, start)
        served.record({piece.provider_id: share.last_served[piece.provider_id] for piece in work})
        if not _renew(lock):
            return None
    return enqueued


# Passes one dispatcher run may make when provider tasks end while it runs.
MAX_PASSES = 5


def _token(piece: AttemptWork | PollWork) -> str:
    if isinstance(piece, AttemptWork):
        return attempt_token(piece.request_id, piece.claim_id)
    return poll_token(piece.kind, piece.claim.claim_id)


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
