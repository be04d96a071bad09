"""The worker's two queues, and which tasks go where.

``celery`` (Celery's default, where a shop's plain ``send_task`` lands) carries control
work: the dispatcher, the shop's ``track_orders``/``report_drop``, the outbox, catalog and
balance checks. ``tracker.polls`` carries the tasks that wait on a provider: status and
refill-status polls and refill attempts. Every worker consumes both, ``celery`` first
(Redis' priority order), and the dispatcher never hands out more poll tasks than the
workers' poll slots, so a control task finds a free pool child within the time the
shortest running task takes, however slow a provider is.
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

CONTROL_QUEUE = "celery"
POLLS_QUEUE = "tracker.polls"

PROVIDER_TASKS = ("tracker.poll_status_batch", "tracker.poll_refill_batch", "tracker.request_refill")


def queue_config() -> dict[str, Any]:
    return {
        "task_default_queue": CONTROL_QUEUE,
        # Control first: a worker takes a poll only when no control task is waiting.
        "task_queues": tuple(_queue(name) for name in (CONTROL_QUEUE, POLLS_QUEUE)),
        "task_routes": {name: {"queue": POLLS_QUEUE} for name in PROVIDER_TASKS},
    }


def _queue(name: str) -> Queue:
    # Bound as Celery binds the queues it creates itself (an exchange and a routing key of
    # the queue's name), so a shop's own Celery client reaches ``celery`` unchanged.
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
