"""The gateway's rate-limit hook: by when a request must leave, counted from its slot."""

from __future__ import annotations

import time

from tests.usecases.helpers import API_KEY, PANEL_URL
from tracker.config import Settings
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.providers.ratelimit import LATE_TOLERANCE
from tracker.testing import InMemoryCallMetrics, ScriptedPanel


class LateLimiter:
    """A limiter whose first caller woke late, as on a loaded host: its first ``acquire``
    returns ``late`` seconds after the slot it granted (at the call), the others at once."""

    def __init__(self, late: float) -> None:
        self.late = late
        self.slots = 0

    def acquire(self, provider_id: int, rate: float, *, max_wait: float = 10.0) -> float:
        self.slots += 1
        time.sleep(self.late if self.slots == 1 else 0.0)
        return 0.0

    def cool_down(self, provider_id: int, seconds: float) -> None:
        return None


def test_the_send_deadline_counts_from_the_slot_not_from_the_limiters_return(
    settings: Settings, panel: ScriptedPanel
) -> None:
    """The limiter already let its caller be up to LATE_TOLERANCE late; the request must
    still leave within LATE_TOLERANCE of the slot itself, or the two allowances add up to
    the whole arrival margin and a slow send goes over the provider's rate."""
    panel.set_order(1, "Pending")
    limiter = LateLimiter(late=LATE_TOLERANCE * 1.5)
    gateway = Gateway(settings, limiter, InMemoryCallMetrics(), transport=panel)
    access = ProviderAccess(id=1, name="panel", api_url=PANEL_URL, api_key=API_KEY, batch_size=100, rate_limit=5.0)
    try:
        gateway.client(access).status_multi([1])
    finally:
        gateway.close()
    # The first slot was already past its tolerance when the request was built: a second.
    assert limiter.slots >= 2
