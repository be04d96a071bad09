"""Provider upkeep tasks: key probes, catalog syncs and balance checks.

Each shares the process's gateway (client pool and Redis rate limit) with the polling
tasks, so upkeep calls count against the same per-provider limit. Each goes provider by
provider within the task's soft time limit, on the database's clock.
"""

from __future__ import annotations

import logging

from celery import shared_task

from tracker.config import get_settings
from tracker.providers.catalog import check_balances as check_due_balances
from tracker.providers.catalog import sync_due_catalogs
from tracker.providers.gateway import shared_gateway
from tracker.providers.key_probe import probe_due_keys
from tracker.task_base import TrackerTask, task_deadline

log = logging.getLogger("tracker.task_base")


@shared_task(base=TrackerTask, name="tracker.probe_keys")
def probe_keys() -> dict[str, int]:
    settings = get_settings()
    return probe_due_keys(settings, shared_gateway(settings), deadline=task_deadline())


@shared_task(base=TrackerTask, name="tracker.sync_catalogs")
def sync_catalogs() -> int:
    settings = get_settings()
    results = sync_due_catalogs(settings, shared_gateway(settings), deadline=task_deadline())
    for result in results:
        log.info(
            "catalog synced: %d services (%d new, %d with refill, %d with cancel)",
            result.services,
            result.added,
            result.with_refill,
            result.with_cancel,
            extra={"provider": result.provider},
        )
    return len(results)


@shared_task(base=TrackerTask, name="tracker.check_balances")
def check_balances() -> int:
    settings = get_settings()
    return check_due_balances(settings, shared_gateway(settings), deadline=task_deadline())
