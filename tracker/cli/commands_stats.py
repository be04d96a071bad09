"""``tracker stats``: per-provider health, for people and for monitoring (exit code)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from tracker.cli.db import database, database_now
from tracker.cli.output import print_json, print_table
from tracker.config import Settings, get_settings

if TYPE_CHECKING:
    from tracker.metrics import CallMetrics

# Monitoring runs this often; a broker that does not answer quickly counts as unreachable.
BROKER_TIMEOUT_SECONDS = 2.0


def register(commands: Any) -> None:
    stats = commands.add_parser(
        "stats",
        help="per-provider health: orders by status, poll lag, calls, circuit, balance",
        description="Per provider: active and final orders by status, poll lag (how long the "
        "oldest overdue order has waited), provider calls and errors in the last hour, "
        "paused/circuit state and the last balance. Exits 0 when every provider is healthy "
        "and 1 when any is paused, has its circuit open, or lags too far behind.",
    )
    stats.add_argument("--json", action="store_true", help="print a JSON array, one object per provider")
    stats.set_defaults(handler=_stats)


def call_metrics(settings: Settings) -> CallMetrics | None:
    """The call counters, or None when the broker cannot be reached (stats print anyway)."""
    import redis

    from tracker.metrics import CallMetrics
    from tracker.redis_clients import broker_redis

    try:
        client = broker_redis(settings, timeout=BROKER_TIMEOUT_SECONDS)
        client.ping()
    except (redis.RedisError, OSError, ValueError):
        return None
    return CallMetrics(client)


def _stats(args: argparse.Namespace) -> int:
    from tracker.orders.stats import provider_stats

    settings = get_settings()
    metrics = call_metrics(settings)
    with database(read_only=True) as session:
        # The database's clock: what is due and late is measured by it.
        views = provider_stats(session, settings, database_now(session), metrics)
    if args.json:
        print_json(views)
    else:
        _print_text(views, broker_reachable=metrics is not None)
    return 0 if all(view["healthy"] for view in views) else 1


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _by_status(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {number}" for status, number in counts.items()) or "none"


def _print_text(views: list[dict[str, Any]], *, broker_reachable: bool) -> None:
    if not views:
        print("no providers (add one with `tracker provider add`)")
        return
    print_table(
        ["PROVIDER", "HEALTH", "STATE", "ACTIVE", "FINAL", "POLL LAG", "CALLS/1H", "ERRORS/1H", "IDS/CALL", "BALANCE"],
        [
            [
                view["provider"],
                "ok" if view["healthy"] else "UNHEALTHY",
                view["state"],
                sum(view["active"].values()),
                sum(view["final"].values()),
                f"{view['poll_lag_seconds']:.0f}s",
                _count(view["calls_last_hour"]),
                _count(view["errors_last_hour"]),
                _ids_per_call(view),
                f"{view['balance']} {view['currency'] or ''}".strip() if view["balance"] is not None else "-",
            ]
            for view in views
        ],
    )
    for view in views:
        print(f"\n{view['provider']}:")
        print(f"  active: {_by_status(view['active'])}")
        print(f"  final:  {_by_status(view['final'])}")
        for problem in view["problems"]:
            print(f"  problem: {problem}")
        for warning in view["warnings"]:
            print(f"  warning: {warning}")
    if not broker_reachable:
        print("tracker: the broker is unreachable: calls and errors are not available", file=sys.stderr)


def _ids_per_call(view: dict[str, Any]) -> str:
    calls, ids = view["calls_last_hour"], view["ids_last_hour"]
    if calls is None or ids is None:
        return "n/a"
    return f"{ids / calls:.1f}" if calls else "-"
