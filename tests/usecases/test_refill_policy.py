"""The refill policy an operator sets (``tracker refill-policy``), on the use case itself."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tracker.config import Settings
from tracker.core.refills import window_days
from tracker.db.models import Provider
from tracker.apiv2.types import CatalogService
from tracker.providers.catalog import store_catalog
from tracker.providers.lookup import UnknownProvider
from tracker.refills.policy import PolicyChange, UnknownService, set_provider_policy, set_service_policy
from tracker.testing import MemoryDatabase, SettableClock

SERVICE = 12


@pytest.fixture
def catalog(db: MemoryDatabase, provider_id: int, clock: SettableClock) -> None:
    entry = CatalogService(SERVICE, "Followers", "Default", "Instagram", Decimal("0.9"), 10, 1000, True, True, None)
    with db.unit_of_work() as session:
        store_catalog(session, session.get_one(Provider, provider_id), [entry], clock())


def test_a_provider_policy_changes_only_what_is_given(db: MemoryDatabase, provider_id: int) -> None:
    with db.unit_of_work() as session:
        set_provider_policy(session, "panel", PolicyChange(refill_days=45, auto_refill_hours=6.0))
    with db.unit_of_work() as session:
        provider = set_provider_policy(session, "panel", PolicyChange(refill_cooldown_hours=2.5))
        assert (provider.refill_days, provider.auto_refill_hours, provider.refill_cooldown_hours) == (45, 6.0, 2.5)
    with db.unit_of_work() as session:
        # None means "as the settings" for the interval and the cool-down.
        provider = set_provider_policy(session, "panel", PolicyChange(auto_refill_hours=None))
        assert (provider.refill_days, provider.auto_refill_hours) == (45, None)


def test_a_provider_guarantee_window_cannot_inherit(db: MemoryDatabase, provider_id: int) -> None:
    with db.unit_of_work() as session, pytest.raises(ValueError, match="cannot inherit"):
        set_provider_policy(session, "panel", PolicyChange(refill_days=None))
    with db.unit_of_work() as session:
        assert session.get_one(Provider, provider_id).refill_days == 30


@pytest.mark.usefixtures("catalog")
def test_a_service_override_wins_until_it_is_set_to_inherit(db: MemoryDatabase, provider_id: int) -> None:
    with db.unit_of_work() as session:
        provider, service = set_service_policy(session, "panel", SERVICE, PolicyChange(refill_days=7))
        assert window_days(service.refill_days, provider.refill_days) == 7
    with db.unit_of_work() as session:
        provider, service = set_service_policy(session, "panel", SERVICE, PolicyChange(refill_days=None))
        assert window_days(service.refill_days, provider.refill_days) == provider.refill_days == 30


@pytest.mark.usefixtures("catalog")
def test_unknown_names_are_refused_with_what_to_do(db: MemoryDatabase, provider_id: int, settings: Settings) -> None:
    with db.unit_of_work() as session, pytest.raises(UnknownService, match="tracker provider sync"):
        set_service_policy(session, "panel", 999, PolicyChange(refill_days=7))
    with db.unit_of_work() as session, pytest.raises(UnknownProvider, match="known providers: panel"):
        set_provider_policy(session, "nope", PolicyChange(refill_days=7))
