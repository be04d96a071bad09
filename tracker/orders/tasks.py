"""The shop's entry point: ``tracker.track_orders``, sent by name from any language.

Thin, like every task: check the arguments, call ``enqueue.track_orders`` in one unit of
work, log what was rejected and return it with the counts. Arguments are IDs only
(Flower shows them), never keys.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from tracker.db.clock import database_now
from tracker.db.session import unit_of_work
from tracker.orders import enqueue
from tracker.task_base import SHOP_TASK_OPTIONS, InvalidTaskInput, TrackerTask

log = logging.getLogger("tracker.task_base")


# Flower shows a task's result as its repr, cut at ``resultrepr_maxsize`` (1 KiB by
# default): room for the refusals the result names.
@shared_task(base=TrackerTask, name="tracker.track_orders", resultrepr_maxsize=4096, **SHOP_TASK_OPTIONS)
def track_orders(
    provider: str, order_ids: list[int | str], service: int | None = None, quantity: int | None = None
) -> dict[str, Any]:
    if not isinstance(order_ids, list | tuple):
        raise InvalidTaskInput(
            f"order_ids must be a list of order IDs, got {type(order_ids).__name__}"
        )
    with unit_of_work() as session:
        # The database's clock: the dispatcher compares the orders' due time with it.
        result = enqueue.track_orders(
            session, provider, order_ids, service=service, quantity=quantity, now=database_now(session)
        )
    for given, reason, _ in result.rejected[: enqueue.SHOWN_REFUSALS]:
        log.warning("rejected order ID %s: %s", given, reason, extra={"provider": result.provider})
    log.info("track_orders %s", result.describe(), extra={"provider": result.provider})
    return result.task_result()
