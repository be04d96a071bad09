"""Registering providers. Validation here gives the operator a clear message per field."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.config import Settings
from tracker.db.models import Provider
from tracker.logs import register_secret
from tracker.providers.secrets import encrypt_api_key, key_hint

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_BATCH_SIZE = 100


class ProviderConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    url: str
    api_key: str | None  # None when updating a provider without changing its key
    rate_limit: float | None = None
    refill_days: int | None = None
    batch_size: int | None = None
    poll_interval: float | None = None
    balance_alert_below: Decimal | None = None

    def __repr__(self) -> str:
        return f"ProviderSpec(name={self.name!r}, url={self.url!r}, api_key=<hidden>)"


def validate_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderConfigError(
            f"invalid provider URL {url!r}: expected http(s)://host/path, e.g. https://panel.example/api/v2"
        )
    if parts.username or parts.password:
        raise ProviderConfigError("the provider URL must not contain credentials; use --key-env")
    if parts.query or parts.fragment:
        raise ProviderConfigError("the provider URL must not contain a query string or fragment")
    return url


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_refusal(url: str, settings: Settings) -> str | None:
    """Why the API key must not be sent to ``url``, or None when it may.

    Plain http:// would carry the key in clear text. It is allowed in local mode, to a
    loopback address (127.0.0.0/8, ::1, localhost: the sim, a local tunnel) in any mode,
    and everywhere when the operator sets TRACKER_ALLOW_HTTP_PROVIDERS=1.
    """
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.scheme.lower() != "http" or settings.local_mode or settings.allow_http_providers:
        return None
    if _is_loopback(host):
        return None
    return (
        f"refusing plain http:// to {host}: the API key would travel in clear text. "
        "Use https://, or set TRACKER_ALLOW_HTTP_PROVIDERS=1 to allow it"
    )


def validate(spec: ProviderSpec, settings: Settings) -> None:
    if not NAME_PATTERN.match(spec.name):
        raise ProviderConfigError(
            f"invalid provider name {spec.name!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    validate_url(spec.url)
    refusal = plain_http_refusal(spec.url, settings)
    if refusal is not None:
        raise ProviderConfigError(refusal)
    if spec.api_key is not None and not spec.api_key.strip():
        raise ProviderConfigError("the API key is empty")
    if spec.batch_size is not None and not 1 <= spec.batch_size <= MAX_BATCH_SIZE:
        raise ProviderConfigError(
            f"batch size must be between 1 and {MAX_BATCH_SIZE} (API v2 allows at most "
            f"{MAX_BATCH_SIZE} IDs per call), got {spec.batch_size}"
        )
    if spec.rate_limit is not None and not 0 < spec.rate_limit <= 1000:
        raise ProviderConfigError(f"rate limit must be between 0 and 1000 requests/s, got {spec.rate_limit}")
    if spec.refill_days is not None and not 0 <= spec.refill_days <= 3650:
        raise ProviderConfigError(f"refill days must be between 0 and 3650, got {spec.refill_days}")
    if spec.poll_interval is not None and spec.poll_interval < 0.1:
        raise ProviderConfigError(f"poll interval must be at least 0.1 s, got {spec.poll_interval}")


def upsert_provider(session: Session, spec: ProviderSpec, settings: Settings, now: datetime) -> tuple[Provider, bool]:
    """Add the provider, or update it if the name exists. Returns (provider, created)."""
    validate(spec, settings)
    provider = session.scalar(select(Provider).where(Provider.name == spec.name))
    created = provider is None
    if provider is None:
        if spec.api_key is None:
            raise ProviderConfigError("a new provider needs an API key")
        provider = Provider(name=spec.name, created_at=now, batch_size=100, rate_limit=5.0, refill_days=30)
        session.add(provider)
    url = validate_url(spec.url)
    if url != provider.api_url:
        # Another panel: which batch forms it answers is learned again.
        provider.supports_multi_status = None
        provider.supports_multi_refill_status = None
    provider.api_url = url
    if spec.api_key is not None:
        register_secret(spec.api_key.strip())
        provider.api_key_encrypted = encrypt_api_key(settings, spec.api_key.strip())
        provider.key_hint = key_hint(spec.api_key.strip())
        # A new key is the fix for a paused provider: resume it.
        provider.paused = False
        provider.paused_reason = None
        provider.consecutive_failures = 0
        provider.circuit_open_until = None
        provider.key_probe_at = None
        provider.key_probe_failures = 0
    if spec.rate_limit is not None:
        provider.rate_limit = spec.rate_limit
    if spec.refill_days is not None:
        provider.refill_days = spec.refill_days
    if spec.batch_size is not None:
        provider.batch_size = spec.batch_size
    if spec.poll_interval is not None:
        provider.poll_interval = spec.poll_interval
    if spec.balance_alert_below is not None:
        provider.balance_alert_below = spec.balance_alert_below
    provider.updated_at = now
    session.flush()
    return provider, created
