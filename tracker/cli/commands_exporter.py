"""``tracker exporter``: Prometheus metrics read from the database and Redis at scrape time."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from tracker.cli.commands_stats import BROKER_TIMEOUT_SECONDS
from tracker.cli.errors import CLIError
from tracker.config import get_settings

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9808


def register(commands: Any) -> None:
    exporter = commands.add_parser(
        "exporter",
        help="serve Prometheus metrics at /metrics (orders, poll lag, calls, circuit, refills, outbox, balance)",
        description="Serves Prometheus metrics at http://ADDRESS:PORT/metrics, read from the "
        "database and the workers' call counters in Redis at each scrape. It binds "
        f"{DEFAULT_ADDRESS} unless --address says otherwise (containers pass 0.0.0.0).",
    )
    exporter.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"listen address (default {DEFAULT_ADDRESS}; containers pass 0.0.0.0)"
    )
    exporter.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    exporter.set_defaults(handler=_exporter)


def _exporter(args: argparse.Namespace) -> int:
    from tracker.metrics import CallMetrics
    from tracker.ops.exporter import TrackerCollector, make_exporter_server
    from tracker.redis_clients import NotARedisURL, broker_redis

    settings = get_settings()
    try:
        # No ping here: a broker that is down now is read again at the next scrape.
        client = broker_redis(settings, timeout=BROKER_TIMEOUT_SECONDS)
    except NotARedisURL as error:
        raise CLIError(str(error)) from None
    collector = TrackerCollector(settings, CallMetrics(client))
    try:
        server = make_exporter_server(collector, args.address, args.port)
    except OSError as error:
        raise CLIError(f"cannot listen on {args.address}:{args.port}: {error.strerror or error}") from None
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"tracker exporter: metrics at http://{host}:{args.port}/metrics", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop)
    with server:
        try:
            server.serve_forever()
        except SystemExit as stop:
            return int(stop.code or 0)
    return 0


def _stop(_signum: int, _frame: FrameType | None) -> None:
    # SIGTERM (a platform, compose, honcho) stops it as cleanly as Ctrl-C.
    raise SystemExit(0)
