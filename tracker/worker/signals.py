"""Worker process hooks that keep it healthy across broker trouble.

Queue bindings: with the Redis transport, a message published to the ``celery``
exchange finds its queue through a binding stored in Redis. A FLUSHDB (or a Redis restart
without persistence) deletes that binding, and from then on kombu drops such messages
silently, including a shop's ``send_task`` calls, until a worker declares its queues
again, which it otherwise does only when it starts. So each worker looks every few
seconds, with one EXISTS, and declares its queues again when a binding is gone.

Pool children: what they share with the worker's main process stays shared (the
collector's freeze, the parent-death signal without cffi); and the task consumer's BRPOP
waits 5 s on empty queues (a consumer bootstep); see docs/performance.md, "Footprint".

Tasks that meet a missing table or column name `tracker db upgrade` in the log.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, bootsteps
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    task_failure,
    task_retry,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from kombu.transport.redis import Channel as RedisChannel
from sqlalchemy.exc import DBAPIError

from tracker import logs
from tracker.config import DEFAULT_SENTINEL_MASTER, get_settings
from tracker.core.time_limits import treat_as_interruption
from tracker.db import migrate
from tracker.db.session import dispose_engines
from tracker.polling.capacity import Capacity, poll_slots_of
from tracker.polling.slots import dispatch_soon
from tracker.redis_clients import redis_client
from tracker.worker.queues import POLLS_QUEUE

log = logging.getLogger("tracker.worker")

REDECLARE_EVERY_SECONDS = 5.0
# How long a worker's BRPOP waits on empty queues before it asks again (kombu: 1 s).
WORKER_BRPOP_SECONDS = 5
PR_SET_PDEATHSIG = 1
_stop = threading.Event()


def binding_keys(app: Celery) -> list[str]:
    """The Redis keys holding the bindings of the queues this worker consumes from: what
    a FLUSHDB deletes and ``redeclare_queues`` writes again."""
    prefix = str((app.conf.broker_transport_options or {}).get("global_keyprefix", ""))
    exchanges = sorted({queue.exchange.name for queue in app.amqp.queues.consume_from.values()})
    return [prefix + RedisChannel.keyprefix_queue % exchange for exchange in exchanges]


def bindings_missing(client: redis.Redis, app: Celery) -> bool:
    keys = binding_keys(app)
    return int(client.exists(*keys)) < len(keys)


def redeclare_queues(app: Celery) -> None:
    # A new connection each time: kombu remembers, per connection, the bindings it has
    # declared, and would not declare again the ones a FLUSHDB has deleted.
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.amqp.queues.consume_from.values():
            queue.bind(channel).declare()


@dataclass(frozen=True, slots=True)
class _Announcement:
    worker: str
    poll_slots: int


def _announcement(consumer: Any) -> _Announcement | None:
    consumed = consumer.app.amqp.queues.consume_from
    if POLLS_QUEUE not in consumed:
        return None
    return _Announcement(consumer.hostname, poll_slots_of(int(consumer.pool.num_processes)))


def broker_redis_of(app: Celery, timeout: float) -> redis.Redis:
    """A client of the Redis this worker's broker connection uses (a ``-b`` on the command
    line included), through the same Sentinels for a ``sentinel://`` URL."""
    options = app.conf.broker_transport_options or {}
    return redis_client(
        app.conf.broker_url,
        master_name=options.get("master_name", DEFAULT_SENTINEL_MASTER),
        sentinel_password=(options.get("sentinel_kwargs") or {}).get("password"),
        timeout=timeout,
    )


def _keep_queues_declared(app: Celery, announcement: _Announcement | None) -> None:
    client = broker_redis_of(app, timeout=5)
    capacity = Capacity(client)
    # A worker that lends poll slots has the dispatcher run as soon as they are announced:
    # after a start or restart, polling resumes at once, not at beat's next tick (and a
    # beat started after the worker ticks first one interval after its own start).
    dispatch_wanted = announcement is not None
    while True:
        try:
            if announcement is not None:
                capacity.announce(announcement.worker, announcement.poll_slots)
            # Looked for rather than declared each time: a declaration needs a connection
            # of its own (see redeclare_queues), and an idle worker's main process spent a
            # fifth of its CPU opening one every 5 s (docs/performance.md, "Footprint").
            if bindings_missing(client, app):
                redeclare_queues(app)
            if dispatch_wanted:
                dispatch_soon()
                dispatch_wanted = False
        except Exception as error:  # noqa: BLE001 - the broker may be down; try again later
            log.debug("could not re-declare queues: %s", error)
        if _stop.wait(REDECLARE_EVERY_SECONDS):
            break


_announced: list[tuple[Celery, _Announcement]] = []


@worker_ready.connect
def start_queue_keeper(sender: Any = None, **_kwargs: Any) -> None:
    app = sender.app if sender is not None else None
    if app is None:
        return
    announcement = _announcement(sender)
    if announcement is not None:
        _announced.append((app, announcement))
    threading.Thread(
        target=_keep_queues_declared, args=(app, announcement), name="queue-keeper", daemon=True
    ).start()


@worker_shutdown.connect
def stop_queue_keeper(**_kwargs: Any) -> None:
    _stop.set()
    # Withdrawn at once, so the dispatcher stops lending this worker's slots now rather
    # than when the announcement lapses.
    for app, announcement in _announced:
        try:
            Capacity(broker_redis_of(app, timeout=2)).withdraw(announcement.worker)
        except redis.RedisError as error:
            log.debug("capacity not withdrawn (it lapses): %s", error)


@worker_init.connect
def bring_schema_up_to_date(**_kwargs: Any) -> None:
    """Local mode (SQLite, nothing configured) migrates the database at start, as `tracker
    run` and every CLI command do, so a plain `celery -A tracker worker` in an empty
    directory works instead of failing every task with "no such table". Production leaves
    migrations to the deploy step (`tracker db upgrade`), and a worker there does not wait
    on a database server at start."""
    if not get_settings().local_mode:
        return
    try:
        if not migrate.schema_is_current():
            migrate.upgrade()
            log.info("database schema brought up to date (local mode)")
    finally:
        dispose_engines()


class WaitLongerOnEmptyQueues(bootsteps.StartStopStep):  # type: ignore[misc]
    """The task consumer's BRPOP waits ``WORKER_BRPOP_SECONDS`` on empty queues.

    An idle worker's main process woke every second only because kombu's BRPOP on its
    empty queues timed out (1 s) and was sent again: a fifth of that process's CPU. A
    message pushed meanwhile ends the wait at once, whatever the timeout.

    Set on the task consumer's channel alone, after each (re)start of it: every other
    consumer keeps kombu's 1 s. Those read replies synchronously (mingle's at start,
    ``celery inspect``), and closing a channel waits for its BRPOP in flight, so a 5 s
    timeout there held a plain worker's start-up 4 s. The ``polling_interval`` transport
    option would have made every synchronous ``drain_events`` sleep as long. The costs that
    remain: a warm shutdown waits for the task consumer's BRPOP (up to 5 s), and kombu's
    health check finds a half-open broker link 4 s later (brpop_timeout +
    health_check_interval)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        channel = c.task_consumer.channel
        if isinstance(channel, RedisChannel):
            channel.brpop_timeout = WORKER_BRPOP_SECONDS


def add_worker_steps(app: Celery) -> None:
    app.steps["consumer"].add(WaitLongerOnEmptyQueues)


# One advice a minute per process: every task meets the same missing table.
ADVISE_UPGRADE_EVERY_SECONDS = 60.0
_last_advice: float | None = None


@task_retry.connect
def advise_upgrade_on_retry(reason: object = None, **_kwargs: Any) -> None:
    # Celery's automatic retry hands over its Retry, which carries the error.
    advise_upgrade_if_schema_missing(getattr(reason, "exc", reason))


@task_failure.connect
def advise_upgrade_on_failure(exception: object = None, **_kwargs: Any) -> None:
    advise_upgrade_if_schema_missing(exception)


def advise_upgrade_if_schema_missing(error: object) -> None:
    """Outside local mode a worker does not migrate (the deploy step runs `tracker db
    upgrade`), so one started on a database never migrated, or behind this release,
    meets "relation ... does not exist" in every task. Celery logs each retry at INFO
    and the final failure without a word on what to do; this names the command."""
    global _last_advice
    if not isinstance(error, DBAPIError) or not migrate.says_schema_missing(error):
        return
    now = time.monotonic()
    if _last_advice is not None and now - _last_advice < ADVISE_UPGRADE_EVERY_SECONDS:
        return
    _last_advice = now
    log.error(
        "the database schema is missing or older than this tracker (%s): run `tracker db upgrade`",
        migrate.database_message(error),
    )


@worker_init.connect
def set_parent_death_signal_through_ctypes(**_kwargs: Any) -> None:
    """Each pool child asks the kernel to be killed with the worker that forked it
    (PR_SET_PDEATHSIG). Celery has billiard make that call, and billiard makes it through
    cffi whenever cffi is importable (cryptography installs it): every pool child then
    builds cffi's C parser to read the one-line declaration of prctl, 6 MB apiece, and on
    a small host two or three children are most of the worker. The same call through
    ctypes costs a few kB. Celery ignores an OSError here, as it does billiard's."""
    import celery.platforms

    if sys.platform.startswith("linux") and hasattr(celery.platforms, "_set_pdeathsig"):
        celery.platforms._set_pdeathsig = set_parent_death_signal


def set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


@celeryd_after_setup.connect
def freeze_imported_objects(**_kwargs: Any) -> None:
    """Once the worker is built, before its pool forks the children: everything imported
    and built so far (the consumer's objects too, which worker_init comes too early for)
    moves out of the garbage collector's sight, so a child's collections do not write to
    (and so copy) the memory pages it shares with the parent. See docs/performance.md."""
    gc.collect()
    gc.freeze()


# A soft time limit may interrupt a database statement half-way (see unit_of_work).
treat_as_interruption(SoftTimeLimitExceeded)


@worker_process_init.connect
def reset_connections_after_fork(**_kwargs: Any) -> None:
    # A forked pool child must not share its parent's database sockets.
    dispose_engines(close=False)


@after_setup_logger.connect
@after_setup_task_logger.connect
def structured_logs(logger: logging.Logger | None = None, **_kwargs: Any) -> None:
    """Context on every line, and no key ever (see tracker.logs)."""
    for target in (logger, logging.getLogger()):
        if target is None:
            continue
        for handler in target.handlers:
            logs.install(handler)
