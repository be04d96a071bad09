"""A tracker deployment's settings, for the ``tracker_env`` fixture, for a whole test
module (one database and one Redis database number shared by the tests that check one
scenario, so each check is a test of its own and the scenario still runs once) and for
the benchmarks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.databases import server_database
from tests.support.redis_db import claim_database, release_database
from tracker.config import reset_settings
from tracker.db import migrate
from tracker.db.session import dispose_engines


def deployment_settings(database_url: str, broker_url: str) -> dict[str, str]:
    """What every deployment needs: its database, its broker, a fresh key for the API keys
    it stores, and production mode (no development shortcuts)."""
    return {
        "TRACKER_DATABASE_URL": database_url,
        "TRACKER_BROKER_URL": broker_url,
        "TRACKER_SECRET_KEY": Fernet.generate_key().decode(),
        "TRACKER_MODE": "production",
    }


def settings_under_test(database_url: str, broker_url: str, state_dir: Path) -> dict[str, str]:
    """A deployment as the tests run it: short intervals, so what it does happens within a
    test's patience."""
    return {
        **deployment_settings(database_url, broker_url),
        "TRACKER_POLL_INTERVAL": "1",
        "TRACKER_TICK_INTERVAL": "1",
        "TRACKER_MAX_POLL_BACKOFF": "2",
        "TRACKER_NOT_FOUND_AFTER": "3",
        # Short leases, so work lost with the broker comes back within the test's patience.
        "TRACKER_LEASE_SECONDS": "10",
        "TRACKER_STATE_DIR": str(state_dir),
    }


@contextmanager
def applied_settings(values: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``values`` set in this process's environment, the settings and database engines read
    afresh from it (and again when the block ends); yields the whole environment, for
    subprocesses."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    dispose_engines()
    try:
        yield dict(os.environ)
    finally:
        reset_settings()
        dispose_engines()


@contextmanager
def module_deployment(
    request: pytest.FixtureRequest, redis_base_url: str, tmp_path: Path, extra: dict[str, str]
) -> Iterator[tuple[dict[str, str], pytest.MonkeyPatch]]:
    """The same environment as the ``tracker_env`` fixture (plus ``extra``), applied to this
    process until the block ends; yields it (for subprocesses) and the monkeypatch that set it."""
    kind = str(request.param)
    if kind == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'tracker.db'}"
    else:
        create, drop = server_database(request, kind)
        database_url = create()
    number = claim_database(redis_base_url)
    values = {**settings_under_test(database_url, f"{redis_base_url}/{number}", tmp_path / "state"), **extra}
    try:
        with pytest.MonkeyPatch.context() as monkeypatch, applied_settings(values, monkeypatch) as env:
            migrate.upgrade(database_url)
            yield env, monkeypatch
    finally:
        release_database(redis_base_url, number)
        if kind != "sqlite":
            drop(database_url)
