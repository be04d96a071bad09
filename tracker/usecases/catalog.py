"""Refreshing a provider's services catalog and balance."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.db.models import Provider, Service
from tracker.provider.types import Balance
from tracker.provider.types import Service as CatalogEntry

log = logging.getLogger("tracker.catalog")


@dataclass(frozen=True, slots=True)
class SyncResult:
    provider: str
    services: int
    added: int
    with_refill: int
    with_cancel: int
    balance: Decimal | None
    currency: str | None


def store_catalog(session: Session, provider: Provider, entries: Sequence[CatalogEntry], now: datetime) -> int:
    """Upsert catalog entries; operator overrides (refill days, auto-refill) are kept.
    Returns how many services were new."""
    existing = {
        service.service_id: service
        for service in session.scalars(select(Service).where(Service.provider_id == provider.id))
    }
    added = 0
    for entry in entries:
        service = existing.get(entry.service_id)
        if service is None:
            service = Service(provider_id=provider.id, service_id=entry.service_id)
            session.add(service)
            added += 1
        service.name = entry.name
        service.type = entry.type
        service.category = entry.category
        service.rate = entry.rate
        service.min = entry.min
        service.max = entry.max
        service.refill = entry.refill
        service.cancel = entry.cancel
        service.updated_at = now
    provider.catalog_synced_at = now
    return added


def store_balance(provider: Provider, balance: Balance, now: datetime) -> None:
    provider.balance = balance.amount
    provider.balance_currency = balance.currency
    provider.balance_checked_at = now
    if provider.balance_alert_below is not None and balance.amount < provider.balance_alert_below:
        log.warning(
            "provider balance %s %s is below the alert threshold %s",
            balance.amount,
            balance.currency or "",
            provider.balance_alert_below,
            extra={"provider": provider.name},
        )
