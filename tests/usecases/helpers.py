"""What the use-case tests do again and again: register the panel, track orders, run a
tick's claims and polls. The fixtures that build the stand-ins are in ``conftest.py``."""

from __future__ import annotations

from collections.abc import Sequence

from tracker.config import Settings
from tracker.db.models import Service
from tracker.orders.enqueue import track_orders
from tracker.polling.dispatch import AttemptWork, PollWork, claim_all
from tracker.polling.engine import PollSummary, poll_batch
from tracker.polling.orders import ORDERS
from tracker.polling.refills import REFILLS
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.refills.attempts import attempt_refill
from tracker.testing import MemoryDatabase, ScriptedPanel, SettableClock

API_KEY = "sk-USECASE-4b1d9e27c3a8f605"
PANEL_URL = "https://panel.test/api/v2"


def add_provider(
    db: MemoryDatabase, settings: Settings, clock: SettableClock, name: str = "panel", url: str = PANEL_URL, **spec: float
) -> int:
    with db.unit_of_work() as session:
        provider, _ = upsert_provider(
            session, ProviderSpec(name, url, API_KEY, **spec), settings, clock()  # type: ignore[arg-type]
        )
        return provider.id


def track(
    db: MemoryDatabase, clock: SettableClock, external_ids: Sequence[int], provider: str = "panel", service: int | None = None
) -> None:
    with db.unit_of_work() as session:
        track_orders(session, provider, list(external_ids), service=service, now=clock())


def completed_with_refill(
    db: MemoryDatabase,
    settings: Settings,
    gateway: Gateway,
    panel: ScriptedPanel,
    clock: SettableClock,
    provider_id: int,
    order_id: int,
    service_id: int,
) -> None:
    """A completed order of a service with refill, seen completed by the tracker an hour ago."""
    with db.unit_of_work() as session:
        session.add(Service(provider_id=provider_id, service_id=service_id, name="Followers", refill=True, updated_at=clock()))
    track(db, clock, [order_id], service=service_id)
    panel.set_order(order_id, "Completed", start_count=100)
    poll_due(db, settings, gateway, clock)
    clock.advance(3600)


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


def tick(db: MemoryDatabase, settings: Settings, gateway: Gateway, clock: SettableClock) -> None:
    """What a tick and every task it hands out do: order and refill polls, refill attempts."""
    for piece in claim_all(settings, clock(), unit_of_work=db.unit_of_work):
        if isinstance(piece, AttemptWork):
            attempt_refill(
                piece.request_id, piece.claim_id, settings=settings, gateway=gateway, clock=clock,
                unit_of_work=db.unit_of_work,
            )
            continue
        poll_batch(
            ORDERS if piece.kind == ORDERS.name else REFILLS, piece.provider_id, piece.claim.claim_id,
            piece.claim.row_ids, settings=settings, gateway=gateway, clock=clock, unit_of_work=db.unit_of_work,
        )
