"""Fixtures of the integration tests that poll in process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tracker.config import get_settings
from tracker.providers.gateway import Gateway


@pytest.fixture
def gateway(tracker_env: dict[str, str]) -> Iterator[Gateway]:
    """The deployment's gateway to its providers, without the shared rate limit."""
    gateway = Gateway(get_settings(), rate_limiter=None)
    yield gateway
    gateway.close()
