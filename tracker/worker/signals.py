"""Worker process hooks that keep it healthy across broker trouble.

Queue bindings: with the Redis transport, a message published to the ``celery``
exchange finds its queue through a binding stored in Redis. A FLUSHDB (or a Redis restart
without persistence) deletes that binding, and from then on kombu drops such messages
silently, including a shop's ``send_task`` calls, until a worker declares its queues
again, which it otherwise does only when it starts. So each worker re-declares its
queues every few seconds; a declaration is one idempotent SADD.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from tracker import logs
from tracker.db.session import dispose_engines

log = logging.getLogger("tracker.worker")

REDECLARE_EVERY_SECONDS = 5.0
_stop = threading.Event()


def redeclare_queues(app: Celery) -> None:
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.amqp.queues.consume_from.values():
            queue.bind(channel).declare()


def _keep_queues_declared(app: Celery) -> None:
    while not _stop.wait(REDECLARE_EVERY_SECONDS):
        try:
            redeclare_queues(app)
        except Exception as error:  # noqa: BLE001 - the broker may be down; try again later
            log.debug("could not re-declare queues: %s", error)


@worker_ready.connect
def start_queue_keeper(sender: Any = None, **_kwargs: Any) -> None:
    app = sender.app if sender is not None else None
    if app is None:
        return
    threading.Thread(target=_keep_queues_declared, args=(app,), name="queue-keeper", daemon=True).start()


@worker_shutdown.connect
def stop_queue_keeper(**_kwargs: Any) -> None:
    _stop.set()


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
