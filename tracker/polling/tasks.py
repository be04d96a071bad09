"""The polling tasks: beat's dispatcher, and the three tasks that call a provider.

``dispatch_polls`` runs the dispatcher (``tracker.polling.dispatch_runs``), which enqueues
one task per committed piece of work. ``poll_status_batch``, ``poll_refill_batch`` and
``request_refill`` run on the ``tracker.polls`` queue, each holding one poll slot of its
provider until it has made its last call (``tracker.polling.slots``). Thin like every
task: IDs in, one engine or use-case call, and the commit inside it. Arguments are IDs
only (Flower shows them), never keys.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from tracker.config import get_settings
from tracker.polling.capacity import attempt_token, poll_token
from tracker.polling.dispatch import AttemptWork, PollWork
from tracker.polling.dispatch_runs import run_dispatcher
from tracker.polling.engine import poll_batch
from tracker.polling.orders import ORDERS
from tracker.polling.refills import REFILLS
from tracker.polling.slots import holding_slot
from tracker.providers.gateway import shared_gateway
from tracker.providers.tasks import probe_keys
from tracker.refills.attempts import NothingSent, attempt_refill
from tracker.task_base import TrackerTask, task_deadline


@shared_task(base=TrackerTask, name="tracker.dispatch_polls")
def dispatch_polls() -> int:
    """The one dispatcher: every call kind of every provider, within one budget per
    provider per tick, and the key probe task when a probe is due."""
    return run_dispatcher(get_settings(), _enqueue, task_deadline(), send_key_probe=probe_keys.delay)


def _enqueue(piece: AttemptWork | PollWork) -> None:
    if isinstance(piece, AttemptWork):
        request_refill.delay(piece.request_id, piece.claim_id, piece.provider_id)
    elif piece.kind == ORDERS.name:
        poll_status_batch.delay(piece.provider_id, piece.claim.claim_id, piece.claim.row_ids)
    else:
        poll_refill_batch.delay(piece.provider_id, piece.claim.claim_id, piece.claim.row_ids)


@shared_task(base=TrackerTask, name="tracker.poll_status_batch")
def poll_status_batch(provider_id: int, claim_id: int, order_ids: list[int]) -> None:
    """Polls one claimed batch of orders: the engine's ``poll_batch`` for ``ORDERS``, as
    ``poll_refill_batch`` is for ``REFILLS`` (the task keeps its public name)."""
    settings = get_settings()
    with holding_slot(provider_id, poll_token(ORDERS.name, claim_id)) as done_calling:
        poll_batch(
            ORDERS, provider_id, claim_id, order_ids,
            settings=settings, gateway=shared_gateway(settings), deadline=task_deadline(), done_calling=done_calling,
        )


@shared_task(base=TrackerTask, name="tracker.poll_refill_batch")
def poll_refill_batch(provider_id: int, claim_id: int, refill_ids: list[int]) -> None:
    settings = get_settings()
    with holding_slot(provider_id, poll_token(REFILLS.name, claim_id)) as done_calling:
        poll_batch(
            REFILLS, provider_id, claim_id, refill_ids,
            settings=settings, gateway=shared_gateway(settings), deadline=task_deadline(), done_calling=done_calling,
        )


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
    settings = get_settings()
    with holding_slot(provider_id, attempt_token(request_id, claim_id)):
        result = attempt_refill(
            request_id, claim_id, settings=settings, gateway=shared_gateway(settings), deadline=task_deadline()
        )
    if result.retry_in is not None:
        # The answer is recorded and the claim kept: retry this same task shortly.
        raise self.retry(countdown=result.retry_in)
    return result.state
