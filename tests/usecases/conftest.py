"""Use-case tests: the real use cases with ``tracker.testing``'s in-memory stand-ins (a
migrated in-memory SQLite database, a settable clock, in-memory rate limit and metrics,
a scripted panel as the HTTP transport). No Redis, no server, no subprocess."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from tracker.config import Settings
from tracker.orders.enqueue import track_orders
from tracker.polling.dispatch import PollWork, claim_all
from tracker.polling.engine import PollSummary, poll_batch
from tracker.polling.orders import ORDERS
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.testing import (
    InMemoryCallMetrics,
    InMemoryRateLimiter,
    MemoryDatabase,
    ScriptedPanel,
    SettableClock,
)

API_KEY = "sk-USECASE-4b1d9e27c3a8f605"
PANEL_URL = "https://panel.test/api/v2"


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def db() -> Iterator[MemoryDatabase]:
    with MemoryDatabase() as database:
        yield database


@pytest.fixture
def settings() -> Settings:
    # A secret key of its own: nothing is read from or written to a state directory.
    return Settings(database_url="sqlite://", secret_key="use-case tests' passphrase, not a real one")


@pytest.fixture
def panel() -> ScriptedPanel:
    return ScriptedPanel(API_KEY)


@pytest.fixture
def limiter(clock: SettableClock) -> InMemoryRateLimiter:
    return InMemoryRateLimiter(clock)


@pytest.fixture
def metrics() -> InMemoryCallMetrics:
    return InMemoryCallMetrics()


@pytest.fixture
def gateway(
    settings: Settings, limiter: InMemoryRateLimiter, metrics: InMemoryCallMetrics, panel: ScriptedPanel
) -> Iterator[Gateway]:
    gateway = Gateway(settings, limiter, metrics, transport=panel)
    yield gateway
    gateway.close()


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


@pytest.fixture
def provider_id(db: MemoryDatabase, settings: Settings, clock: SettableClock) -> int:
    return add_provider(db, settings, clock)


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
