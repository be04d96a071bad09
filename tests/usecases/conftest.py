"""Use-case tests: the real use cases with ``tracker.testing``'s in-memory stand-ins (a
migrated in-memory SQLite database, a settable clock, in-memory rate limit and metrics,
a scripted panel as the HTTP transport). No Redis, no server, no subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.usecases.helpers import API_KEY, add_provider
from tracker.config import Settings
from tracker.providers.gateway import Gateway
from tracker.testing import (
    InMemoryCallMetrics,
    InMemoryRateLimiter,
    MemoryDatabase,
    ScriptedPanel,
    SettableClock,
)

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


@pytest.fixture
def provider_id(db: MemoryDatabase, settings: Settings, clock: SettableClock) -> int:
    return add_provider(db, settings, clock)


