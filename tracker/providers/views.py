"""Providers as ``tracker provider list`` shows them. Keys appear only as their hint."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tracker.core.rendering import iso, money
from tracker.db.models import Provider, Service


def provider_views(session: Session) -> list[dict[str, Any]]:
    """Every provider by name, with how many services its catalog lists."""
    counts = dict(session.execute(select(Service.provider_id, func.count()).group_by(Service.provider_id)).all())
    return [
        provider_view(provider, counts.get(provider.id, 0))
        for provider in session.scalars(select(Provider).order_by(Provider.name))
    ]


def provider_view(provider: Provider, services: int) -> dict[str, Any]:
    return {
        "name": provider.name,
        "url": provider.api_url,
        "key": provider.key_hint,
        "batch_size": provider.batch_size,
        "rate_limit": provider.rate_limit,
        "poll_interval": provider.poll_interval,
        "refill_days": provider.refill_days,
        "paused": provider.paused,
        "paused_reason": provider.paused_reason,
        # Paused over a rejected key: when the key is probed next (None for other pauses).
        "key_probe_at": iso(provider.key_probe_at),
        "consecutive_failures": provider.consecutive_failures,
        "circuit_open_until": iso(provider.circuit_open_until),
        "services": services,
        "balance": money(provider.balance),
        "currency": provider.balance_currency,
        "balance_checked_at": iso(provider.balance_checked_at),
        "catalog_synced_at": iso(provider.catalog_synced_at),
    }
