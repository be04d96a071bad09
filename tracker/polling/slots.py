"""The worker side of poll slots: a provider task holds one from the moment the
dispatcher starts it until it has made its last call (``holding_slot``), and a freed slot
has the dispatcher run at once (``dispatch_soon``) rather than at the next tick.

The counts themselves live in Redis (``tracker.polling.capacity``); this module holds the
process's Redis client for them and the protocol between dispatcher runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from celery import current_app

from tracker.core.time_limits import MESSAGE_EXPIRY_FLOOR_SECONDS
from tracker.polling.capacity import InFlight
from tracker.redis_clients import coordination

log = logging.getLogger("tracker.task_base")

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
    """Run the dispatcher now rather than at the next tick. At most one such run is queued
    per DISPATCH_SOON_EXPIRES: the marker lapses then, so a message still unread (every
    pool child busy) stops no later one. The message itself expires only after hosts'
    clocks may differ (a worker ahead of this one would drop it at once otherwise)."""
    if coordination().set(QUEUED_KEY, 1, nx=True, ex=DISPATCH_SOON_EXPIRES):
        current_app.send_task("tracker.dispatch_polls", expires=MESSAGE_EXPIRY_FLOOR_SECONDS)
