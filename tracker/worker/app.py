"""The Celery app, configured as Celery's docs advise for short, I/O-bound, at-least-once work.

- ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1: a message is acknowledged only
  after its task finished, so a killed worker's batch is redelivered, and no worker hoards
  messages it cannot start.
- No result backend: tracking tasks report through the database, not through results.
- JSON only, so a shop can enqueue from any language.
- Every countdown the tracker uses is far below the Redis visibility timeout; long waits
  live in the database (``next_poll_at``, ``next_attempt_at``).
- Workers send task events themselves, so Flower shows every task without extra flags.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from tracker.config import Settings, get_settings
from tracker.core.time_limits import MESSAGE_EXPIRY_FLOOR_SECONDS
from tracker.redis_clients import broker_transport_options
from tracker.worker.queues import queue_config

VISIBILITY_TIMEOUT = 900
CATALOG_CHECK_SECONDS = 3600.0


def build_config() -> dict[str, Any]:
    settings = get_settings()
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # "priority": a worker always takes from its first queue (control) when it can.
        # A sentinel:// URL adds the master's name (and the Sentinels' password).
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "queue_order_strategy": "priority",
            **broker_transport_options(settings),
        },
        **queue_config(),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Prefork: one child per core runs Python in parallel, and the time limits above
        # fire (the threads pool ignores them). A poll task makes its calls concurrently
        # on threads of its own (tracker.polling.engine), so waiting on a panel costs a
        # thread, not a child. Measured in docs/performance.md.
        "worker_pool": "prefork",
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        # On a lost broker connection, cancel running tasks so their redelivered
        # messages are the only copies (our tasks are idempotent either way).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.state_dir / "celerybeat-schedule"),
        # Creates the state directory when beat opens its schedule (see tracker.worker.beat).
        "beat_scheduler": "tracker.worker.beat:StateDirScheduler",
        "enable_utc": True,
        "timezone": "UTC",
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    tick_interval = settings.tick_interval

    def every(task: str, seconds: float) -> dict[str, Any]:
        # A run that waited longer than its own interval in the queue is worthless: drop it;
        # but never sooner than hosts' clocks may differ (see MESSAGE_EXPIRY_FLOOR_SECONDS).
        expires = max(MESSAGE_EXPIRY_FLOOR_SECONDS, seconds)
        return {"task": task, "schedule": seconds, "options": {"expires": expires}}

    schedule = {
        # One dispatcher for every call kind: one budget per provider per tick.
        "dispatch-polls": every("tracker.dispatch_polls", tick_interval),
        "schedule-auto-refills": every(
            "tracker.schedule_auto_refills", settings.auto_refill_scan_interval
        ),
        # Hourly runs refresh each provider's catalog once it is older than the sync
        # interval (a day by default), and a newly added provider's within the hour.
        "sync-catalogs": every(
            "tracker.sync_catalogs", min(CATALOG_CHECK_SECONDS, settings.catalog_sync_interval)
        ),
    }
    schedule["check-balances"] = every(
        "tracker.check_balances", min(CATALOG_CHECK_SECONDS, settings.balance_check_interval)
    )
    # No entry for key probes: the dispatcher sends tracker.probe_keys when one is due.
    if settings.webhook_url or settings.event_task:
        schedule["dispatch-outbox"] = every("tracker.dispatch_outbox", tick_interval)
    if settings.count_probe is not None:
        schedule["probe-counts"] = every("tracker.probe_counts", settings.count_probe_interval)
    return schedule


app = Celery("tracker")
app.conf.update(build_config())
# Each slice keeps its tasks beside its code; listed in the pipeline's order.
app.conf.include = [
    "tracker.orders.tasks",
    "tracker.polling.tasks",
    "tracker.refills.tasks",
    "tracker.providers.tasks",
    "tracker.outbox.tasks",
]

from tracker.worker.signals import add_worker_steps  # noqa: E402 - also registers the worker hooks

add_worker_steps(app)
