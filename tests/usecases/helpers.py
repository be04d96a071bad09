"""What the use-case tests do again and again: register the panel, track orders, run a
tick's claims and polls. The fixtures that build the stand-ins are in ``conftest.py``."""

from __future__ import annotations

from collections.abc import Sequence

from tracker.config import Settings
from tracker.orders.enqueue import track_orders
from tracker.polling.dispatch import PollWork, claim_all
from tracker.polling.engine import PollSummary, poll_batch
from tracker.polling.orders import ORDERS
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.testing import MemoryDatabase, SettableClock

API_KEY = "sk-USECASE-4b1d9e27c3a8f605"
PANEL_URL = "https://panel.test/api/v2"


def add_provider(db: MemoryDatabase, settings: Settings, clock: SettableClock, name: str = "panel", **spec: float) -> int:
    with db.unit_of_work() as session:
        provider, _ = upsert_provider(
            session, ProviderSpec(name, PANEL_URL, API_KEY, **spec), settings, clock()  # type: ignore[arg-type]
        )
        return provider.id


def track(
    db: MemoryDatabase, clock: SettableClock, external_ids: Sequence[int], provider: str = "panel", service: int | None = None
) -> None:
    with db.unit_of_work() as session:
        track_orders(session, provider, list(external_ids), service=service, now=clock())


def poll_due(db: MemoryDatabase, settings: Settings, gateway: Gateway, clock: SettableClock) -> list[PollSummary]:
    """What a tick and its poll tasks do: claim every due order, poll each claim."""
    work = claim_all(settings, clock(), unit_of_work=db.unit_of_work)
    return [
        poll_batch(
            ORDERS, piece.provider_id, piece.claim.claim_id, piece.claim.row_ids,
            settings=settings, gateway=gateway, clock=clock, unit_of_work=db.unit_of_work,
        )
        for piece in work
        if isinstance(piece, PollWork)
    ]
