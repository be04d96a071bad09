"""Refill tasks that call no provider: drop reports from the shop, the auto-refill scan
and count probes. Each opens refill requests; the dispatcher sends them within the
provider's budget (``tracker.request_refill`` lives with the polling tasks, in
``tracker.polling.tasks``, because it holds a poll slot like them).

Task arguments are IDs only; never payloads or keys.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from tracker.config import get_settings
from tracker.db.clock import database_now, database_time
from tracker.db.session import unit_of_work
from tracker.refills import auto_refill, count_probes, drops
from tracker.task_base import SHOP_TASK_OPTIONS, InvalidTaskInput, TrackerTask, task_deadline

log = logging.getLogger("tracker.task_base")


@shared_task(base=TrackerTask, name="tracker.report_drop", **SHOP_TASK_OPTIONS)
def report_drop(provider: str, order_id: int | str) -> dict[str, Any]:
    # An unknown provider or order fails as InvalidTaskInput through the base.
    try:
        with unit_of_work() as session:
            # The database's clock: cool-downs are compared with times other workers wrote.
            report = drops.report_drop(session, provider, order_id, settings=get_settings(), now=database_now(session))
    except ValueError as exc:
        # parse_order_id says what is wrong, not with what: name the value given.
        raise InvalidTaskInput(f"order ID {order_id!r} {exc}") from None
    log.info("report_drop %s", report.describe(), extra={"provider": report.provider})
    # The request, if any, is due now (or when the cool-down ends): the dispatcher's next
    # tick claims it within the provider's budget.
    return {
        "drop_id": report.drop_id,
        "eligible": report.eligible,
        "request_id": report.request_id,
    }


@shared_task(base=TrackerTask, name="tracker.schedule_auto_refills")
def schedule_auto_refills() -> int:
    return auto_refill.schedule_auto_refills(get_settings(), database_time(unit_of_work))


@shared_task(base=TrackerTask, name="tracker.probe_counts")
def probe_counts() -> dict[str, int]:
    summary = count_probes.probe_counts(get_settings(), deadline=task_deadline())
    return {
        "probed": summary.probed,
        "drops": summary.drops,
        "requests": summary.requests,
    }
