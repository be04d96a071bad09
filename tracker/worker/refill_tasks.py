"""Celery tasks for refills and the catalog. Thin like ``tasks``: load IDs, call a use
case (which commits), then enqueue follow-ups.

Task arguments are IDs only; never payloads or keys.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from tracker.clock import utcnow
from tracker.config import get_settings
from tracker.db.clock import database_now
from tracker.db.session import unit_of_work
from tracker.polling.engine import poll_batch
from tracker.polling.capacity import attempt_token, poll_token
from tracker.polling.refills import REFILLS
from tracker.usecases import auto_refill, count_probes, refills
from tracker.usecases.catalog import sync_due_catalogs
from tracker.usecases.refills import NothingSent, attempt_refill
from tracker.worker.base import SHOP_INPUT_ERRORS, InvalidTaskInput, TrackerTask
from tracker.worker.tasks import gateway, holding_slot

log = logging.getLogger("tracker.tasks")


@shared_task(base=TrackerTask, name="tracker.report_drop", bad_input=SHOP_INPUT_ERRORS)
def report_drop(provider: str, order_id: int | str) -> dict[str, Any]:
    # An unknown provider or order fails as InvalidTaskInput through the base.
    try:
        with unit_of_work() as session:
            # The database's clock: cool-downs are compared with times other workers wrote.
            report = refills.report_drop(session, provider, order_id, settings=get_settings(), now=database_now(session))
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
    with holding_slot(provider_id, attempt_token(request_id, claim_id)):
        result = attempt_refill(request_id, claim_id, settings=get_settings(), gateway=gateway())
    if result.retry_in is not None:
        # The answer is recorded and the claim kept: retry this same task shortly.
        raise self.retry(countdown=result.retry_in)
    return result.state


@shared_task(base=TrackerTask, name="tracker.poll_refill_batch")
def poll_refill_batch(provider_id: int, claim_id: int, refill_ids: list[int]) -> None:
    with holding_slot(provider_id, poll_token(REFILLS.name, claim_id)) as done_calling:
        poll_batch(
            REFILLS, provider_id, claim_id, refill_ids,
            settings=get_settings(), gateway=gateway(), done_calling=done_calling,
        )


@shared_task(base=TrackerTask, name="tracker.schedule_auto_refills")
def schedule_auto_refills() -> int:
    return auto_refill.schedule_auto_refills(get_settings(), utcnow())


@shared_task(base=TrackerTask, name="tracker.probe_counts")
def probe_counts() -> dict[str, int]:
    summary = count_probes.probe_counts(get_settings())
    return {
        "probed": summary.probed,
        "drops": summary.drops,
        "requests": summary.requests,
    }


@shared_task(base=TrackerTask, name="tracker.sync_catalogs")
def sync_catalogs() -> int:
    results = sync_due_catalogs(get_settings(), gateway(), utcnow())
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
