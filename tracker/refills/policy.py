"""Refill policy: the guarantee window, the auto-refill interval and the refill cool-down
an operator sets for a provider, or overrides for one service of its catalog.

A service's value of None means "as the provider"; a provider's auto-refill and cool-down
of None mean "as the settings" (``TRACKER_AUTO_REFILL_HOURS``,
``TRACKER_REFILL_COOLDOWN_HOURS``). A provider's guarantee window cannot inherit: it is
the default every service falls back to.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.core.ids import parse_positive
from tracker.db.models import Provider, Service
from tracker.providers.lookup import provider_by_name


class Keep(Enum):
    """Leave the value as it is (as opposed to None, which means "inherit")."""

    KEEP = "keep"


KEEP = Keep.KEEP
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    refill_days: int | None | Keep = KEEP
    auto_refill_hours: float | None | Keep = KEEP
    refill_cooldown_hours: float | None | Keep = KEEP


class UnknownService(LookupError):
    def __init__(self, provider: str, service_id: int) -> None:
        super().__init__(
            f"service {service_id} is not in {provider}'s catalog (run `tracker provider sync`)"
        )


def _changed(current: T, given: T | Keep) -> T:
    return current if isinstance(given, Keep) else given


def set_provider_policy(session: Session, provider_name: str, change: PolicyChange) -> Provider:
    """Apply ``change`` to the provider's defaults. Raises ``UnknownProvider``, or
    ``ValueError`` when asked to make the guarantee window inherit."""
    provider = provider_by_name(session, provider_name)
    if change.refill_days is None:
        raise ValueError("a provider's --refill-days cannot inherit: give a number")
    provider.refill_days = _changed(provider.refill_days, change.refill_days)
    provider.auto_refill_hours = _changed(provider.auto_refill_hours, change.auto_refill_hours)
    provider.refill_cooldown_hours = _changed(provider.refill_cooldown_hours, change.refill_cooldown_hours)
    return provider


def set_service_policy(
    session: Session, provider_name: str, raw_service: object, change: PolicyChange
) -> tuple[Provider, Service]:
    """Apply ``change`` to one service's overrides. Raises ``UnknownProvider``, then
    ``ValueError`` for a malformed service ID, or ``UnknownService`` (the catalog has not
    been synced, or does not list it)."""
    provider = provider_by_name(session, provider_name)
    service_id = parse_positive("service", raw_service)
    if service_id is None:
        raise ValueError("a service ID is needed")
    service = session.scalar(
        select(Service).where(Service.provider_id == provider.id, Service.service_id == service_id)
    )
    if service is None:
        raise UnknownService(provider.name, service_id)
    service.refill_days = _changed(service.refill_days, change.refill_days)
    service.auto_refill_hours = _changed(service.auto_refill_hours, change.auto_refill_hours)
    service.refill_cooldown_hours = _changed(service.refill_cooldown_hours, change.refill_cooldown_hours)
    return provider, service
