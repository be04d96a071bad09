"""Provider health tasks: probing the key of a provider paused because it was rejected.

Apart from ``tracker.worker.tasks`` so the polling tasks can change without touching it;
it shares their gateway (client pool and Redis rate limit) and database retry policy.
"""

from __future__ import annotations

from celery import shared_task

from tracker.clock import utcnow
from tracker.config import get_settings
from tracker.usecases.key_probe import probe_due_keys
from tracker.worker.base import TrackerTask
from tracker.worker.tasks import gateway


@shared_task(base=TrackerTask, name="tracker.probe_keys")
def probe_keys() -> dict[str, int]:
    return probe_due_keys(get_settings(), gateway(), utcnow)
