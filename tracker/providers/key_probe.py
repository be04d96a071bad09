"""Probing the key of a provider paused because it rejected the API key.

Some panels answer "Invalid API key" for a moment when their own database hiccups, so a
rejected key pauses the provider (see ``tracker.providers.health``) but does not
stop it for good: when ``providers.key_probe_at`` is due, one ``balance`` call tries the
stored key. It works: the provider resumes. "Invalid API key" again: the next probe waits
twice as long (``key_probe_delay``), so a really bad key costs one call per probe
interval. Any other failure (timeout, 5xx, 429) says nothing about the key: the probe is
repeated after the same delay.

A probe is claimed before its call: ``key_probe_at`` moves forward in a committed
compare-and-set, so two workers never probe one provider at once, and a worker that dies
mid-call only delays the next probe. Its answer applies only while the provider is still
paused for the key with the key the probe used; an operator's new key wins. A run starts
a probe only while its call can still end before the task's soft time limit; the claims
it did not get to are handed back, due now, for the next run. The dispatcher looks for
due probes every tick (``key_probe_due``) and only then sends ``tracker.probe_keys``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ColumnElement, and_, exists, select, update
from sqlalchemy.orm import Session

from tracker.config import WRITE_MARGIN_SECONDS, Settings
from tracker.core.time_limits import Deadline, deadline_or_after, interruptions
from tracker.db.clock import database_clock
from tracker.db.models import Provider
from tracker.db.session import UnitOfWork, unit_of_work
from tracker.apiv2.client import calls_finish_by
from tracker.apiv2.errors import InvalidKey, ProviderError
from tracker.apiv2.types import Balance
from tracker.providers.ratelimit import RateLimitBusy
from tracker.providers.catalog import store_balance
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.outbox.delivery import record_provider_alert
from tracker.providers.health import next_probe_at

log = logging.getLogger("tracker.health")


class ProbeOutcome(StrEnum):
    RESUMED = "resumed"
    REJECTED = "rejected"
    FAILED = "failed"
    # The operator changed the key or resumed the provider while the probe was out.
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class ProbeClaim:
    access: ProviderAccess
    failures: int
    # The stored (encrypted) key the probe tries: its answer is about this key only.
    key_token: str
    # key_probe_at as the claim moved it: a claim handed back unprobed is due again at
    # once, unless someone moved it since.
    claimed_until: datetime


def _probe_due(now: datetime) -> ColumnElement[bool]:
    return and_(Provider.paused.is_(True), Provider.key_probe_at.is_not(None), Provider.key_probe_at <= now)


def key_probe_due(session: Session, now: datetime) -> bool:
    """Whether some provider's key probe is due: the dispatcher asks every tick (one read
    of the providers table), so the probe task runs only when it has a call to make."""
    return bool(session.scalar(select(exists().where(_probe_due(now)))))


def claim_due_probes(session: Session, settings: Settings, now: datetime) -> list[ProbeClaim]:
    """Claim every provider whose key probe is due. The caller commits before calling."""
    due = session.scalars(select(Provider).where(_probe_due(now))).all()
    claims = []
    for provider in due:
        # Compare-and-set on the due time: of two workers that read the same row, only one
        # moves it. Until the probe's own delay has passed nobody else probes, even if
        # this worker dies mid-call.
        until = next_probe_at(settings, provider.key_probe_failures, now)
        moved = session.connection().execute(
            update(Provider)
            .where(Provider.id == provider.id, Provider.key_probe_at == provider.key_probe_at)
            .values(key_probe_at=until)
        )
        if moved.rowcount == 1:
            claims.append(
                ProbeClaim(
                    ProviderAccess.of(provider, settings), provider.key_probe_failures, provider.api_key_encrypted, until
                )
            )
    return claims


def probe_due_keys(
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime] | None = None,
    *,
    deadline: Deadline | None = None,
    unit_of_work: UnitOfWork = unit_of_work,
) -> dict[str, int]:
    """Probe every due provider once; returns how many probes ended how. ``clock``: by
    default the database's; ``deadline``: the task's soft time limit (by default
    TRACKER_TASK_SOFT_TIME_LIMIT from now)."""
    deadline = deadline_or_after(deadline, settings.task_soft_time_limit)
    with unit_of_work() as session:
        if clock is None:
            clock = database_clock(session)
        claims = claim_due_probes(session, settings, clock())
    outcomes: dict[str, int] = {}
    for index, claim in enumerate(claims):
        if not deadline.allows(settings.provider_try_seconds + WRITE_MARGIN_SECONDS):
            _hand_back(claims[index:], clock(), unit_of_work)
            break
        try:
            with calls_finish_by(deadline.sooner(WRITE_MARGIN_SECONDS)):
                outcome = probe_key(claim, settings, gateway, clock, unit_of_work=unit_of_work)
        except interruptions():
            # This probe's claim keeps its delay (its call may have gone out); the others
            # go back, due now.
            _hand_back(claims[index + 1 :], clock(), unit_of_work)
            raise
        outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
    return outcomes


def _hand_back(claims: Sequence[ProbeClaim], now: datetime, unit_of_work: UnitOfWork) -> None:
    if not claims:
        return
    with unit_of_work() as session:
        for claim in claims:
            session.execute(
                update(Provider)
                .where(Provider.id == claim.access.id, Provider.key_probe_at == claim.claimed_until)
                .values(key_probe_at=now)
                .execution_options(synchronize_session=False)
            )
    log.info("key probes: %d handed back for the next run (time limit)", len(claims))


def probe_key(
    claim: ProbeClaim,
    settings: Settings,
    gateway: Gateway,
    clock: Callable[[], datetime],
    *,
    unit_of_work: UnitOfWork = unit_of_work,
) -> ProbeOutcome:
    """One ``balance`` call with the stored key, and what it means for the pause."""
    balance: Balance | None = None
    error: ProviderError | RateLimitBusy | None = None
    try:
        balance = gateway.client(claim.access).balance()
    except (ProviderError, RateLimitBusy) as failure:
        error = failure
    with unit_of_work() as session:
        provider = session.get(Provider, claim.access.id, with_for_update=True)
        if (
            provider is None
            or not provider.paused
            or provider.key_probe_at is None
            or provider.api_key_encrypted != claim.key_token
        ):
            return ProbeOutcome.STALE
        now = clock()
        if balance is not None:
            _resume(session, settings, provider, balance, now)
            return ProbeOutcome.RESUMED
        if isinstance(error, InvalidKey):
            provider.key_probe_failures = claim.failures + 1
            provider.key_probe_at = next_probe_at(settings, provider.key_probe_failures, now)
            provider.updated_at = now
            log.warning(
                "key probe: the provider still rejects the API key; next probe in %.0f s",
                (provider.key_probe_at - now).total_seconds(),
                extra={"provider": provider.name, "probes_rejected": provider.key_probe_failures},
            )
            return ProbeOutcome.REJECTED
        # Not an answer about the key: try again after the same delay, without counting it.
        provider.key_probe_at = next_probe_at(settings, claim.failures, now)
        log.info(
            "key probe failed (%s); next probe in %.0f s",
            type(error).__name__,
            (provider.key_probe_at - now).total_seconds(),
            extra={"provider": provider.name},
        )
        return ProbeOutcome.FAILED


def _resume(session: Session, settings: Settings, provider: Provider, balance: Balance, now: datetime) -> None:
    probes = provider.key_probe_failures
    provider.paused = False
    provider.paused_reason = None
    provider.key_probe_at = None
    provider.key_probe_failures = 0
    provider.consecutive_failures = 0
    provider.circuit_open_until = None
    provider.updated_at = now
    # The probe's answer is a real balance reading: keep it.
    store_balance(session, settings, provider, balance, now)
    log.warning(
        "provider resumed: the API key works again",
        extra={"provider": provider.name, "probes_rejected": probes},
    )
    record_provider_alert(
        session, settings, provider, "provider.resumed", "the provider accepts the API key again; tracking resumed", now
    )
