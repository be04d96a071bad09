"""Persisting provider health after a call: circuit breaker, pause, 429 cool-down."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis
from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.models import Provider
from tracker.db.session import UnitOfWork
from tracker.core.health import (
    Health,
    after_failure,
    after_rate_limited,
    key_probe_delay,
    rate_limit_wait,
)
from tracker.core.scheduling import failure_backoff
from tracker.apiv2.errors import (
    InvalidKey,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
)
from tracker.providers.ratelimit import CallLimiter, RateLimitBusy
from tracker.outbox.delivery import record_provider_alert

log = logging.getLogger("tracker.health")

KEY_PAUSE_REASON = "the provider rejected the API key"


def base_interval(provider: Provider, settings: Settings) -> float:
    """Seconds between polls of one active row of this provider, before adaptive back-off."""
    return provider.poll_interval or settings.poll_interval


def health_of(provider: Provider) -> Health:
    return Health(
        paused=provider.paused,
        consecutive_failures=provider.consecutive_failures,
        circuit_open_until=provider.circuit_open_until,
    )


def record_success(session: Session, provider_id: int) -> None:
    """Close the circuit. Written only when there is something to reset: every poll batch
    succeeds here, and an unconditional write would serialise them all on one row."""
    session.execute(
        update(Provider)
        .where(
            Provider.id == provider_id,
            or_(Provider.consecutive_failures > 0, Provider.circuit_open_until.is_not(None)),
        )
        .values(consecutive_failures=0, circuit_open_until=None)
        .execution_options(synchronize_session=False)
    )


def record_failure(
    session: Session,
    provider_id: int,
    error: ProviderError,
    now: datetime,
    settings: Settings,
    rate_limiter: CallLimiter | None,
) -> Health:
    """Update the provider's health for one failed call and return it."""
    provider = session.get(Provider, provider_id, with_for_update=True)
    if provider is None:
        return Health()
    health = health_of(provider)
    if isinstance(error, InvalidKey):
        if not provider.paused:
            _pause_for_rejected_key(session, provider, error, now, settings)
            health = health_of(provider)
        # Already paused: for the key (its probe is scheduled) or by an operator (never
        # resumed by itself). A late answer from a call in flight changes neither.
    elif isinstance(error, RateLimited):
        health = after_rate_limited(health, now, error.retry_after)
        if rate_limiter is not None:
            try:
                rate_limiter.cool_down(provider_id, rate_limit_wait(error.retry_after))
            except redis.RedisError as failure:
                # The database keeps the 429 (circuit_open_until); losing the answer over a
                # shared cool-down that could not be stored would be worse.
                log.warning("429 cool-down not stored in Redis: %s", type(failure).__name__)
        log.warning(
            "provider rate-limited us (HTTP 429); cooling down",
            extra={"provider": provider.name, "retry_after": error.retry_after},
        )
    else:
        health = after_failure(health, now, threshold=settings.circuit_failure_threshold)
        log.warning(
            "provider call failed: %s",
            error,
            extra={
                "provider": provider.name,
                "failures": health.consecutive_failures,
                "circuit_open_until": health.circuit_open_until,
            },
        )
    provider.consecutive_failures = health.consecutive_failures
    provider.circuit_open_until = health.circuit_open_until
    provider.updated_at = now
    return health


def record_abandoned_call(
    unit_of_work: UnitOfWork,
    provider_id: int,
    action: str,
    now: datetime,
    settings: Settings,
    rate_limiter: CallLimiter | None,
) -> None:
    """A call the task's soft time limit abandoned counts for the provider's circuit as
    the timeout it would have become (in a unit of work of its own, on the way out)."""
    with unit_of_work() as session:
        record_failure(session, provider_id, ProviderTimeout.abandoned(action), now, settings, rate_limiter)


def next_probe_at(settings: Settings, failures: int, now: datetime) -> datetime:
    """When to probe a rejected key next, after ``failures`` rejected probes."""
    delay = key_probe_delay(failures, base=settings.key_probe_base, cap=settings.key_probe_cap)
    return now + timedelta(seconds=delay)


def _pause_for_rejected_key(
    session: Session, provider: Provider, error: InvalidKey, now: datetime, settings: Settings
) -> None:
    """Pause the provider and schedule the first probe of its key (see
    ``tracker.providers.key_probe``): some panels reject a good key for a moment."""
    provider.paused = True
    provider.paused_reason = KEY_PAUSE_REASON
    provider.key_probe_failures = 0
    provider.key_probe_at = next_probe_at(settings, 0, now)
    log.error(
        "provider paused: the API key was rejected; probing it with back-off, and "
        "`tracker provider add` with a new key resumes it at once",
        extra={"provider": provider.name, "action": error.action, "key_probe_at": provider.key_probe_at},
    )
    record_provider_alert(
        session,
        settings,
        provider,
        "provider.paused",
        "the provider rejected the API key; tracking is paused until the key works again "
        "(probed with back-off) or is replaced",
        now,
    )


def record_call(
    session: Session,
    provider_id: int,
    error: ProviderError | None,
    now: datetime,
    settings: Settings,
    rate_limiter: CallLimiter | None,
) -> Health | None:
    """Record how one call went; the provider's health after a failure, None after a
    success. A well-formed refusal (``{"error": ...}``) is the provider working as it
    should, except for a rejected key, which pauses it."""
    if error is None or (isinstance(error, ProviderRejected) and not isinstance(error, InvalidKey)):
        record_success(session, provider_id)
        return None
    return record_failure(session, provider_id, error, now, settings, rate_limiter)


def retry_delay_after(
    session: Session,
    provider_id: int,
    error: ProviderError | RateLimitBusy | None,
    interval: float,
    settings: Settings,
    rate_limiter: CallLimiter | None,
    now: datetime,
    *,
    refusal_is_failure: bool = False,
) -> float:
    """Record how a poll's call went and return the seconds until the rows it could not
    update are due again: the rate limiter's wait, one interval after a refusal, or an
    exponential back-off (equal jitter) after a failure.

    ``refusal_is_failure``: a status call has no legitimate refusal (not-found answers
    come per ID), so a top-level ``{"error": ...}`` there counts towards the circuit
    breaker; otherwise a panel alternating 5xx and refusals would never trip it."""
    if isinstance(error, RateLimitBusy):
        return error.wait_seconds
    if refusal_is_failure and error is not None:
        health: Health | None = record_failure(session, provider_id, error, now, settings, rate_limiter)
    else:
        health = record_call(session, provider_id, error, now, settings, rate_limiter)
    if health is None:
        return interval
    return failure_backoff(
        max(1, health.consecutive_failures),
        base=max(settings.tick_interval, interval / 4),
        cap=interval * settings.max_poll_backoff_factor,
    )
