"""``tracker exporter``: the tracker's state as Prometheus metrics, read at scrape time.

Nothing is cached and nothing runs between scrapes: each scrape opens one read-only
transaction and runs the same grouped counts as ``tracker stats`` (indexed, see
``ix_orders_status_counts``), then reads the workers' call totals from Redis in one
round trip. A database or broker that does not answer is reported as
``tracker_database_up 0`` / ``tracker_broker_up 0``, and the metrics that need it are
left out, so Prometheus sees a gap instead of a made-up zero.

Labels are bounded: provider names, normalised statuses, API v2 actions, outcomes (``ok``
or a ``ProviderError`` class name, see ``tracker.metrics``), outbox states and currency
codes. No key, URL, order ID or payload is ever a label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tracker.db.clock import database_now
from tracker.config import Settings
from tracker.db.models import Provider
from tracker.db.session import unit_of_work
from tracker.core.health import CircuitState
from tracker.core.status import OrderStatus, RefillStatus
from tracker.metrics import SEVERITIES, CallMetrics, CallTotals
from tracker.orders.stats import (
    NOT_POLLED_YET,
    lag_limit,
    outbox_counts,
    provider_stats,
    refill_counts,
    refill_request_counts,
)

log = logging.getLogger("tracker.exporter")

CIRCUIT_STATE_VALUES = {
    CircuitState.CLOSED.value: 0,
    CircuitState.HALF_OPEN.value: 1,
    CircuitState.OPEN.value: 2,
    CircuitState.PAUSED.value: 3,
}
ORDER_STATUSES = frozenset({status.value for status in OrderStatus} | {NOT_POLLED_YET})
REFILL_STATUSES = frozenset({status.value for status in RefillStatus} | {NOT_POLLED_YET})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape read from the database."""

    views: list[dict[str, Any]]
    # Keyed by provider name, like the views.
    providers: dict[str, Provider]
    refills: dict[int, dict[str, int]]
    refill_requests: dict[int, dict[str, int]]
    outbox: dict[str, int]


def read_snapshot(session: Session, settings: Settings, now: datetime) -> Snapshot:
    providers = {provider.name: provider for provider in session.scalars(select(Provider))}
    # Call counts come from the Redis totals instead, so provider_stats needs no broker.
    views = provider_stats(session, settings, now, None)
    return Snapshot(views, providers, refill_counts(session), refill_request_counts(session), outbox_counts(session))


class TrackerCollector(Collector):
    """Reads everything at scrape time (``collect``)."""

    def __init__(
        self,
        settings: Settings,
        call_metrics: CallMetrics | None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._settings = settings
        self._call_metrics = call_metrics
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        database_up = GaugeMetricFamily("tracker_database_up", "1 when the last scrape could read the database, else 0")
        broker_up = GaugeMetricFamily(
            "tracker_broker_up", "1 when the last scrape could read the call counters in Redis (the broker), else 0"
        )
        try:
            with unit_of_work(self._settings.database_url, read_only=True) as session:
                # By default the database's clock, which every due time is written by.
                now = self._clock() if self._clock is not None else database_now(session)
                snapshot = read_snapshot(session, self._settings, now)
                session.expunge_all()
        except SQLAlchemyError as error:
            # The type only: a driver's message may carry the connection URL.
            log.warning("scrape: the database could not be read (%s)", type(error).__name__)
            database_up.add_metric([], 0)
            yield database_up
            return
        database_up.add_metric([], 1)
        yield database_up
        yield from _database_metrics(snapshot, self._settings)
        totals = self._totals(snapshot)
        broker_up.add_metric([], 0 if totals is None else 1)
        yield broker_up
        if totals is not None:
            yield from _call_metrics(snapshot, totals)

    def _totals(self, snapshot: Snapshot) -> dict[int, CallTotals] | None:
        if self._call_metrics is None:
            return None
        try:
            return self._call_metrics.totals([provider.id for provider in snapshot.providers.values()])
        except (redis.RedisError, OSError) as error:
            log.warning("scrape: the call counters could not be read (%s)", type(error).__name__)
            return None


def _bounded(value: str, allowed: frozenset[str], fallback: str) -> str:
    return value if value in allowed else fallback


def _database_metrics(snapshot: Snapshot, settings: Settings) -> Iterator[Metric]:
    orders = GaugeMetricFamily(
        "tracker_orders",
        "Tracked orders by provider and normalised status, active and final, as `tracker orders` "
        f"shows them; orders the provider has not answered for yet have status \"{NOT_POLLED_YET}\"",
        labels=["provider", "status"],
    )
    active = GaugeMetricFamily("tracker_orders_active", "Orders not final yet (still polled), by provider", labels=["provider"])
    lag = GaugeMetricFamily(
        "tracker_poll_lag_seconds",
        "How long the oldest overdue active order has waited past its poll time (0 when none is overdue)",
        labels=["provider"],
    )
    lag_limit_family = GaugeMetricFamily(
        "tracker_poll_lag_limit_seconds",
        "The poll lag beyond which `tracker stats` calls the provider unhealthy: max(60 s, 2 x its poll interval)",
        labels=["provider"],
    )
    healthy = GaugeMetricFamily(
        "tracker_provider_healthy",
        "1 when `tracker stats` calls the provider healthy (not paused, circuit closed, poll lag within its limit)",
        labels=["provider"],
    )
    circuit = GaugeMetricFamily(
        "tracker_provider_circuit_state",
        "Circuit breaker state: 0 closed (working), 1 half-open (one probe batch allowed), "
        "2 open (nothing sent until it cools down), 3 paused (invalid key, or an operator)",
        labels=["provider"],
    )
    paused = GaugeMetricFamily(
        "tracker_provider_paused", "1 when the provider is paused (invalid key, or an operator), else 0", labels=["provider"]
    )
    failures = GaugeMetricFamily(
        "tracker_provider_consecutive_failures",
        "Consecutive failed calls; the circuit opens at TRACKER_CIRCUIT_FAILURES",
        labels=["provider"],
    )
    balance = GaugeMetricFamily(
        "tracker_provider_balance",
        "The provider's last fetched account balance, in its currency",
        labels=["provider", "currency"],
    )
    balance_alert = GaugeMetricFamily(
        "tracker_provider_balance_alert_below",
        "The balance below which the operator wants an alert (`tracker provider add --balance-alert-below`)",
        labels=["provider", "currency"],
    )
    balance_checked = GaugeMetricFamily(
        "tracker_provider_balance_checked_timestamp_seconds",
        "When the balance was last fetched, as a Unix timestamp",
        labels=["provider"],
    )
    refills = GaugeMetricFamily(
        "tracker_refills",
        "Refills the provider accepted, by normalised refill status",
        labels=["provider", "status"],
    )
    requests = GaugeMetricFamily(
        "tracker_refill_requests",
        "Our refill requests by state: pending (being retried), accepted, gave_up "
        "(window closed, refill disabled, attempts exhausted)",
        labels=["provider", "state"],
    )
    for view in snapshot.views:
        name = view["provider"]
        provider = snapshot.providers[name]
        by_status: dict[str, int] = {}
        for group in ("active", "final"):
            for status, number in view[group].items():
                label = _bounded(status, ORDER_STATUSES, OrderStatus.UNKNOWN.value)
                by_status[label] = by_status.get(label, 0) + number
        for status, number in sorted(by_status.items()):
            orders.add_metric([name, status], number)
        active.add_metric([name], sum(view["active"].values()))
        lag.add_metric([name], view["poll_lag_seconds"])
        lag_limit_family.add_metric([name], lag_limit(provider, settings))
        healthy.add_metric([name], 1 if view["healthy"] else 0)
        circuit.add_metric([name], CIRCUIT_STATE_VALUES[view["state"]])
        paused.add_metric([name], 1 if view["state"] == CircuitState.PAUSED.value else 0)
        failures.add_metric([name], view["consecutive_failures"])
        currency = provider.balance_currency or ""
        if provider.balance is not None:
            balance.add_metric([name, currency], float(provider.balance))
        if provider.balance_alert_below is not None:
            balance_alert.add_metric([name, currency], float(provider.balance_alert_below))
        if provider.balance_checked_at is not None:
            balance_checked.add_metric([name], provider.balance_checked_at.timestamp())
        for status, number in sorted(snapshot.refills.get(provider.id, {}).items()):
            refills.add_metric([name, _bounded(status, REFILL_STATUSES, RefillStatus.UNKNOWN.value)], number)
        for state, number in sorted(snapshot.refill_requests.get(provider.id, {}).items()):
            requests.add_metric([name, state], number)
    outbox = GaugeMetricFamily(
        "tracker_outbox_events",
        "Events for the shop in the outbox: pending (not delivered yet: the backlog) and "
        "failed (given up after TRACKER_WEBHOOK_RETRY_FOR; `tracker events resend --failed` retries them)",
        labels=["state"],
    )
    for state, number in snapshot.outbox.items():
        outbox.add_metric([state], number)
    yield from (orders, active, lag, lag_limit_family, healthy, circuit, paused, failures)
    yield from (balance, balance_alert, balance_checked, refills, requests, outbox)


def _call_metrics(snapshot: Snapshot, totals: dict[int, CallTotals]) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "tracker_provider_calls",
        "Provider API calls the workers made, by action and outcome: ok, or the error class "
        "(ProviderTimeout, HTTPError, NotJSON, InvalidKey, ...). Counted in Redis; a flushed broker resets it",
        labels=["provider", "action", "outcome"],
    )
    ids = CounterMetricFamily(
        "tracker_provider_call_ids",
        "Order or refill IDs the workers' calls carried, by action (IDs per call = this rate / the calls rate)",
        labels=["provider", "action"],
    )
    salvaged = CounterMetricFamily(
        "tracker_provider_salvaged_answers",
        "Answers read from among PHP diagnostics around their JSON (a panel left in debug mode), "
        "by the worst severity: deprecated, notice, warning (unknown: counted before severities were)",
        labels=["provider", "severity"],
    )
    for name, provider in sorted(snapshot.providers.items()):
        counted = totals.get(provider.id)
        if counted is None:
            continue
        for (action, outcome), number in sorted(counted.calls.items()):
            calls.add_metric([name, action, outcome], number)
        for action, number in sorted(counted.ids.items()):
            ids.add_metric([name, action], number)
        for severity in SEVERITIES:
            salvaged.add_metric([name, severity], counted.salvaged_by_severity.get(severity, 0))
        unsplit = counted.salvaged - sum(counted.salvaged_by_severity.values())
        if unsplit > 0:
            salvaged.add_metric([name, "unknown"], unsplit)
    yield from (calls, ids, salvaged)


def registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug(format, *args)


def wsgi_app(collector: Collector) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry(collector))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"tracker exporter: metrics at /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are at /metrics\n"]

    return app


def make_exporter_server(collector: Collector, address: str, port: int) -> WSGIServer:
    """One scrape at a time: a second Prometheus waits rather than doubling the queries."""
    return make_server(address, port, wsgi_app(collector), handler_class=_QuietHandler)
