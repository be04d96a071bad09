"""`tracker stats`: per-provider health for people and for monitoring.

A provider is unhealthy when it is paused, its circuit is open (or probing), or its
oldest overdue order waits longer than ``max(60 s, 2 × its poll interval)``: then the
workers are not keeping up, or are not running at all. Warnings do not make it unhealthy:
answers salvaged from PHP diagnostics (a panel left in debug mode) are one, with the
count by the worst severity around their JSON (deprecated, notice, warning).

It sits with the orders' other read views because what it mostly reads is the orders'
progress (by status, and how late the oldest due one is); the provider's health and call
counts it adds come from the providers slice and the metrics below it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.models import Order, OutboxEvent, Provider, Refill, RefillRequest
from tracker.core.health import CircuitState
from tracker.metrics import SEVERITIES, CallCounts, CallMetrics
from tracker.providers.health import base_interval, health_of
from tracker.core.rendering import iso, money


# How an order (or refill) the provider has not answered for yet is counted.
NOT_POLLED_YET = "not polled yet"


def lag_limit(provider: Provider, settings: Settings) -> float:
    return max(60.0, 2 * base_interval(provider, settings))


def provider_stats(
    session: Session, settings: Settings, now: datetime, metrics: CallMetrics | None
) -> list[dict[str, Any]]:
    counts: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: {"active": {}, "final": {}})
    for provider_id, final, status, number in session.execute(
        select(Order.provider_id, Order.final, Order.status, func.count()).group_by(
            Order.provider_id, Order.final, Order.status
        )
    ):
        counts[provider_id]["final" if final else "active"][status or NOT_POLLED_YET] = number
    # Claimed orders have next_poll_at in the future (their lease), so they are not "overdue".
    # One subquery per provider: each is the first entry of the due index (ix_orders_due),
    # where a GROUP BY would walk every overdue order.
    oldest_due = (
        select(func.min(Order.next_poll_at))
        .where(Order.provider_id == Provider.id, Order.final == false(), Order.next_poll_at <= now)
        .scalar_subquery()
    )
    views = []
    for provider, due_since in session.execute(select(Provider, oldest_due).order_by(Provider.name)):
        state = health_of(provider).state(now)
        lag = max(0.0, (now - due_since).total_seconds()) if due_since is not None else 0.0
        calls = _calls(metrics, provider.id)
        problems = []
        if state is CircuitState.PAUSED:
            problems.append(f"paused: {provider.paused_reason or 'by an operator'}{_probe_note(provider)}")
        elif state is not CircuitState.CLOSED:
            problems.append(f"circuit {state.value} after {provider.consecutive_failures} failures")
        if lag > lag_limit(provider, settings):
            problems.append(f"poll lag {lag:.0f}s exceeds {lag_limit(provider, settings):.0f}s")
        views.append(
            {
                "provider": provider.name,
                "healthy": not problems,
                "problems": problems,
                "warnings": _warnings(calls),
                "state": state.value,
                "active": dict(sorted(counts[provider.id]["active"].items())),
                "final": dict(sorted(counts[provider.id]["final"].items())),
                "poll_lag_seconds": round(lag, 1),
                "calls_last_hour": calls.calls if calls else None,
                "errors_last_hour": calls.errors if calls else None,
                "ids_last_hour": calls.ids if calls else None,
                "salvaged_last_hour": calls.noisy if calls else None,
                "salvaged_last_hour_by_severity": dict(calls.noisy_by_severity) if calls else None,
                "consecutive_failures": provider.consecutive_failures,
                "circuit_open_until": iso(provider.circuit_open_until),
                "key_probe_at": iso(provider.key_probe_at),
                "key_probes_rejected": provider.key_probe_failures,
                "balance": money(provider.balance),
                "currency": provider.balance_currency,
                "balance_checked_at": iso(provider.balance_checked_at),
            }
        )
    return views


def _warnings(calls: CallCounts | None) -> list[str]:
    """Worth a look, but not unhealthy: the provider answers, only not cleanly."""
    if calls is None or not calls.noisy:
        return []
    answers = "answer" if calls.noisy == 1 else "answers"
    their = "its" if calls.noisy == 1 else "their"
    worst_first = sorted(calls.noisy_by_severity.items(), key=lambda item: -SEVERITIES.index(item[0]))
    by_severity = ", ".join(f"{severity} {number}" for severity, number in worst_first if number)
    return [
        f"{calls.noisy} {answers} salvaged from PHP diagnostics around {their} JSON in the last hour"
        + (f" (worst: {by_severity})" if by_severity else "")
    ]


def _probe_note(provider: Provider) -> str:
    """For a pause over a rejected key: when the key is probed next (it resumes by itself)."""
    if provider.key_probe_at is None:
        return ""
    return f"; next key probe at {iso(provider.key_probe_at)} ({provider.key_probe_failures} rejected so far)"


def _calls(metrics: CallMetrics | None, provider_id: int) -> CallCounts | None:
    if metrics is None:
        return None
    try:
        return metrics.last_hour(provider_id)
    except Exception:  # noqa: BLE001 - the broker may be unreachable; stats still print
        return None


def refill_counts(session: Session) -> dict[int, dict[str, int]]:
    """Refills the providers accepted, per provider and status (``not polled yet`` before
    their first answer)."""
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for provider_id, status, number in session.execute(
        select(Refill.provider_id, Refill.status, func.count()).group_by(Refill.provider_id, Refill.status)
    ):
        counts[provider_id][status or NOT_POLLED_YET] = number
    return counts


def refill_request_counts(session: Session) -> dict[int, dict[str, int]]:
    """Our refill requests per provider and state: ``pending`` (retrying), ``accepted``,
    ``gave_up``."""
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for provider_id, state, number in session.execute(
        select(RefillRequest.provider_id, RefillRequest.state, func.count()).group_by(
            RefillRequest.provider_id, RefillRequest.state
        )
    ):
        counts[provider_id][state] = number
    return counts


def outbox_counts(session: Session) -> dict[str, int]:
    """The outbox's backlog (``pending``: neither delivered nor given up) and its failures
    (``failed``: given up, kept until resent). Delivered events are not counted: a week
    of them is kept, and counting those on every scrape would cost a table scan; both
    counts here walk a partial index."""
    pending = session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.final == false()))
    failed = session.scalar(
        select(func.count()).select_from(OutboxEvent).where(OutboxEvent.failed_at.is_not(None))
    )
    return {"pending": int(pending or 0), "failed": int(failed or 0)}
