"""Access to providers from a worker or an operator's command: decrypted credentials,
cached clients, the shared rate limit.

One ``ProviderClient`` (one connection pool) per provider per process, rebuilt when the
provider's URL or key changes. Every HTTP call first takes a slot from the shared Redis
rate limiter, and is refused (``InsecureProviderURL``, nothing sent) when it would carry the
key over plain http:// where that is not allowed (see ``plain_http_refusal``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import requests
from requests.adapters import BaseAdapter

from tracker.config import Settings
from tracker.db.models import Provider
from tracker.logs import register_secret
from tracker.metrics import CallMetrics, CallRecorder
from tracker.apiv2.client import CallRecord, ProviderClient
from tracker.apiv2.errors import InsecureProviderURL
from tracker.providers.ratelimit import LATE_TOLERANCE, MAX_WAIT_SECONDS, CallLimiter, RateLimiter
from tracker.providers.secrets import decrypt_api_key
from tracker.providers.registry import plain_http_refusal
from tracker.redis_clients import broker_redis


log = logging.getLogger("tracker.gateway")


@dataclass(frozen=True, slots=True)
class ProviderAccess:
    """What a worker needs to call one provider. ``api_key`` never appears in its repr."""

    id: int
    name: str
    api_url: str
    api_key: str = field(repr=False)
    batch_size: int
    rate_limit: float

    @classmethod
    def of(cls, provider: Provider, settings: Settings) -> ProviderAccess:
        api_key = decrypt_api_key(settings, provider.api_key_encrypted)
        register_secret(api_key)
        return cls(
            id=provider.id,
            name=provider.name,
            api_url=provider.api_url,
            api_key=api_key,
            batch_size=provider.batch_size,
            rate_limit=provider.rate_limit,
        )

    @property
    def fingerprint(self) -> str:
        material = f"{self.api_url}\n{self.api_key}\n{self.rate_limit}\n{self.batch_size}"
        return hashlib.sha256(material.encode()).hexdigest()


def refuse_plain_http(access: ProviderAccess, settings: Settings, action: str) -> None:
    """Raise ``InsecureProviderURL`` when the key must not be sent to ``access.api_url``:
    a provider stored with a plain http:// URL before that was refused at ``provider add``."""
    refusal = plain_http_refusal(access.api_url, settings)
    if refusal is not None:
        raise InsecureProviderURL(action, refusal)


class Gateway:
    """``transport``: a requests adapter that every client's calls go through instead of
    the network (``tracker.testing.ScriptedPanel``); None, the default, for real HTTP."""

    def __init__(
        self,
        settings: Settings,
        rate_limiter: CallLimiter | None,
        metrics: CallRecorder | None = None,
        *,
        transport: BaseAdapter | None = None,
    ) -> None:
        self._settings = settings
        self._rate_limiter = rate_limiter
        self._metrics = metrics
        self._transport = transport
        self._clients: dict[int, tuple[str, ProviderClient]] = {}
        self._lock = threading.Lock()

    @property
    def rate_limiter(self) -> CallLimiter | None:
        return self._rate_limiter

    def client(self, access: ProviderAccess) -> ProviderClient:
        with self._lock:
            cached = self._clients.get(access.id)
            if cached is not None and cached[0] == access.fingerprint:
                return cached[1]
            if cached is not None:
                cached[1].close()
            client = ProviderClient(
                access.api_url,
                access.api_key,
                timeout=(self._settings.http_connect_timeout, self._settings.http_read_timeout),
                deadline=max(self._settings.http_deadline, self._settings.http_connect_timeout),
                max_body_bytes=self._settings.http_max_body_bytes,
                max_ids_per_call=access.batch_size,
                before_call=self._throttle(access),
                after_call=self._count(access),
                session=self._transported_session(),
            )
            self._clients[access.id] = (access.fingerprint, client)
            return client

    def _transported_session(self) -> requests.Session | None:
        if self._transport is None:
            return None
        session = requests.Session()
        session.trust_env = False
        session.mount("https://", self._transport)
        session.mount("http://", self._transport)
        return session

    def _throttle(self, access: ProviderAccess) -> Callable[[str, float | None], float | None]:
        limiter = self._rate_limiter
        settings = self._settings

        def before_call(action: str, max_wait: float | None) -> float | None:
            # Before every request, so nothing is sent, and the caller sees a ProviderError
            # where it already handles failed calls.
            refuse_plain_http(access, settings, action)
            if limiter is None:
                return None
            wait = MAX_WAIT_SECONDS if max_wait is None else min(MAX_WAIT_SECONDS, max_wait)
            asked = time.monotonic()
            waited = limiter.acquire(access.id, access.rate_limit, max_wait=wait)
            # The request must leave within the tolerance of its slot, not of the moment the
            # limiter returned: the limiter may already have let its caller be late. The slot
            # came no earlier than this (asked before its reservation), so this errs early.
            return asked + waited + LATE_TOLERANCE

        return before_call

    def _count(self, access: ProviderAccess) -> Callable[[CallRecord], None]:
        metrics = self._metrics

        def after_call(call: CallRecord) -> None:
            if metrics is None:
                return
            try:
                metrics.record(access.id, call)
            except redis.RedisError as error:
                # Counters are for monitoring; losing one must never fail a poll.
                log.debug("call metrics not recorded: %s", error)

        return after_call

    def close(self) -> None:
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()


_shared_lock = threading.Lock()
_shared: Gateway | None = None


def shared_gateway(settings: Settings) -> Gateway:
    """This process's gateway: one client pool per provider and the Redis rate limit,
    shared by every task the process runs."""
    global _shared
    with _shared_lock:
        if _shared is None:
            client = broker_redis(settings)
            _shared = Gateway(
                settings, RateLimiter(client, failover_pause=settings.failover_pause), CallMetrics(client)
            )
        return _shared
