"""Refreshing a provider's services catalog and balance: on demand (``tracker provider
sync``) and from beat, about once per ``TRACKER_CATALOG_SYNC_INTERVAL``.

Beat's runs go provider by provider, and start one only while its calls (each one try,
retries only as they fit) can still end before the task's soft time limit; the providers
left are still due, and the next run takes them. A call the soft limit abandons counts
against the provider as the timeout it would have become, and the limit is raised again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline, deadline_or_after, interruptions
from tracker.db.clock import database_clock, database_time
from tracker.db.models import Provider, Service
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.apiv2.client import calls_finish_by
from tracker.apiv2.errors import ProviderError
from tracker.apiv2.types import Balance, CatalogService
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.outbox.delivery import record_provider_alert
from tracker.providers.health import record_abandoned_call, record_call

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


def distinct_services(entries: Sequence[CatalogService]) -> tuple[list[CatalogService], list[int]]:
    """(one entry per service ID, the IDs listed more than once). Real panels list a
    service in two categories; the last listing wins, as it would in a dict of the list."""
    last: dict[int, CatalogService] = {}
    repeated: dict[int, None] = {}
    for entry in entries:
        if entry.service_id in last:
            repeated[entry.service_id] = None
            # Re-insert so the service keeps the position of its last listing.
            del last[entry.service_id]
        last[entry.service_id] = entry
    return list(last.values()), sorted(repeated)


def retry_refused_batch_forms(provider: Provider) -> None:
    """Forget that the panel refused the batch forms (``orders=`` / ``refills=``): one
    refusal before any batch worked moves it to single calls, 100 a sweep instead of one,
    which a passing glitch of a panel that reads batches must not cost for good. After
    each catalog sync (daily, and ``tracker provider sync``) the batch form is tried
    once more: a panel without it pays one refused call, the others get batches back. A
    form that worked is kept."""
    if provider.supports_multi_status is False:
        provider.supports_multi_status = None
    if provider.supports_multi_refill_status is False:
        provider.supports_multi_refill_status = None


def store_catalog(session: Session, provider: Provider, entries: Sequence[CatalogService], now: datetime) -> int:
    """Upsert catalog entries; operator overrides (refill days, auto-refill) are kept.
    A service listed twice is stored once, as its last listing. Returns how many
    services were new."""
    unique, repeated = distinct_services(entries)
    if repeated:
        shown = ", ".join(str(service_id) for service_id in repeated[:20])
        more = f" and {len(repeated) - 20} more" if len(repeated) > 20 else ""
        log.warning(
            "catalog lists %d service(s) more than once, kept the last listing of each: %s%s",
            len(repeated), shown, more, extra={"provider": provider.name},
        )
    existing = {
        service.service_id: service
        for service in session.scalars(select(Service).where(Service.provider_id == provider.id))
    }
    added = 0
    for entry in unique:
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


def store_balance(session: Session, settings: Settings, provider: Provider, balance: Balance, now: datetime) -> None:
    """Keep the balance; below the provider's alert threshold, log it every time and emit
    a ``provider.balance_low`` event when it crosses the threshold (not on every check)."""
    previous = provider.balance
    provider.balance = balance.amount
    provider.balance_currency = balance.currency
    provider.balance_checked_at = now
    threshold = provider.balance_alert_below
    if threshold is None or balance.amount >= threshold:
        return
    log.warning(
        "provider balance %s %s is below the alert threshold %s",
        balance.amount,
        balance.currency or "",
        threshold,
        extra={"provider": provider.name},
    )
    if previous is None or previous >= threshold:
        record_provider_alert(
            session,
            settings,
            provider,
            "provider.balance_low",
            f"balance {balance.amount} is below {threshold}",
            now,
            balance=balance.amount,
            threshold=threshold,
            currency=balance.currency,
        )


def _active_providers_older_than(
    settings: Settings, last_done: InstrumentedAttribute[datetime | None], before: datetime, unit_of_work: UnitOfWork
) -> list[ProviderAccess]:
    """Active providers whose ``last_done`` moment is before ``before``, or never was."""
    with unit_of_work() as session:
        return [
            ProviderAccess.of(provider, settings)
            for provider in session.scalars(
                select(Provider).where(Provider.paused.is_(False), or_(last_done.is_(None), last_done < before))
            )
        ]


def _time_for(settings: Settings, deadline: Deadline, calls: int) -> bool:
    """Whether ``calls`` provider calls, one try each, and the write after them can still
    end before ``deadline``."""
    return deadline.allows(calls * settings.provider_try_seconds + WRITE_MARGIN_SECONDS)


def check_balances(
    settings: Settings,
    gateway: Gateway,
    now: datetime | None = None,
    *,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> int:
    """Fetch the balance of every active provider not checked for a balance interval.
    ``now``: by default the database's clock; ``deadline``: the task's soft time limit
    (by default TRACKER_TASK_SOFT_TIME_LIMIT from now)."""
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    if now is None:
        # Read once, moved on by the monotonic clock: a failure late in a long run is
        # recorded at its own time, so the circuit it opens is not cut short.
        with unit_of_work(read_only=True) as session:
            clock = database_clock(session)
    else:
        start = now
        clock = lambda: start  # noqa: E731 - a fixed moment, as the caller gave it
    now = clock()
    due = _active_providers_older_than(
        settings, Provider.balance_checked_at, now - timedelta(seconds=settings.balance_check_interval), unit_of_work
    )
    checked = 0
    for access in due:
        if not _time_for(settings, deadline, 1):
            break
        try:
            with calls_finish_by(deadline.sooner(WRITE_MARGIN_SECONDS)):
                balance = gateway.client(access).balance()
        except RateLimitBusy:
            continue
        except interruptions():
            record_abandoned_call(unit_of_work, access.id, "balance", clock(), settings, gateway.rate_limiter)
            raise
        except ProviderError as error:
            log.warning("balance check failed: %s", error, extra={"provider": access.name})
            with unit_of_work() as session:
                record_call(session, access.id, error, clock(), settings, gateway.rate_limiter)
            continue
        with unit_of_work() as session:
            store_balance(session, settings, session.get_one(Provider, access.id), balance, clock())
        checked += 1
    return checked


def sync_due_catalogs(
    settings: Settings,
    gateway: Gateway,
    now: datetime | None = None,
    *,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> list[SyncResult]:
    """Refresh the catalog and balance of every active provider whose catalog is older
    than ``catalog_sync_interval`` (or was never fetched). A failing provider is logged
    and skipped; the others are still refreshed. ``now``: by default the database's
    clock; ``deadline``: the task's soft time limit (by default
    TRACKER_TASK_SOFT_TIME_LIMIT from now)."""
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    now = now or database_time(unit_of_work)
    due = _active_providers_older_than(
        settings, Provider.catalog_synced_at, now - timedelta(seconds=settings.catalog_sync_interval), unit_of_work
    )
    results: list[SyncResult] = []
    for access in due:
        # Two calls: the catalog and the balance.
        if not _time_for(settings, deadline, 2):
            break
        try:
            with calls_finish_by(deadline.sooner(WRITE_MARGIN_SECONDS)):
                results.append(sync_catalog(access, settings, gateway, now, unit_of_work=unit_of_work))
        except RateLimitBusy:
            continue
        except ProviderError as failure:
            log.warning("catalog sync failed: %s", failure, extra={"provider": access.name})
    return results


def sync_catalog(
    access: ProviderAccess,
    settings: Settings,
    gateway: Gateway,
    now: datetime,
    on_step: Callable[[str], None] = lambda _step: None,
    *,
    record_health: bool = True,
    unit_of_work: UnitOfWork = unit_of_work,
) -> SyncResult:
    """Refresh one provider's catalog and balance through the gateway (shared rate limit,
    call counting, the operator's timeouts): the one sync behind ``tracker provider sync``
    and beat's ``tracker.sync_catalogs``. A provider's failure is raised
    (``ProviderError``), and ``RateLimitBusy`` too. With ``record_health`` (beat's sync)
    the call's outcome also counts in the provider's health, as a poll's does; an
    operator's sync only reports it, and leaves pausing a provider to the workers' calls.
    ``on_step`` hears each step by name (a big catalog takes a while to fetch and store)."""
    action = "services"
    try:
        client = gateway.client(access)
        on_step("fetching the services catalog")
        entries = client.services()
        action = "balance"
        on_step("fetching the balance")
        balance = client.balance()
    except ProviderError as failure:
        if record_health:
            with unit_of_work() as session:
                record_call(session, access.id, failure, now, settings, gateway.rate_limiter)
        raise
    except interruptions():
        if record_health:
            record_abandoned_call(unit_of_work, access.id, action, now, settings, gateway.rate_limiter)
        raise
    on_step(f"storing {len(entries)} services")
    with unit_of_work() as session:
        if record_health:
            record_call(session, access.id, None, now, settings, gateway.rate_limiter)
        provider = session.get_one(Provider, access.id)
        added = store_catalog(session, provider, entries, now)
        store_balance(session, settings, provider, balance, now)
        retry_refused_batch_forms(provider)
    unique = distinct_services(entries)[0]
    return SyncResult(
        provider=access.name,
        services=len(unique),
        added=added,
        with_refill=sum(1 for entry in unique if entry.refill),
        with_cancel=sum(1 for entry in unique if entry.cancel),
        balance=balance.amount,
        currency=balance.currency,
    )
