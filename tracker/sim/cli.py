"""``tracker sim``: run the simulated API v2 provider in the foreground.

The first line on stdout is ``sim listening on http://HOST:PORT/api/v2 dialect=NAME``
(flushed), so a parent process started with ``--port 0`` can read the port from it.
The API key is never printed: only whether one is required.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from types import FrameType

from tracker.sim.dialects import DIALECTS
from tracker.sim.provider import SimConfig
from tracker.sim.server import SimServer


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal amount: {text!r}") from None


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker sim",
        description="Run a simulated SMM panel (API v2 provider) on HTTP, with an admin API "
        "under /admin/ to seed orders, inject faults and read counters.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8700, help="port (default %(default)s; 0 = a free port)"
    )
    parser.add_argument(
        "--dialect",
        choices=sorted(DIALECTS),
        default="standard",
        help="which provider's answer shapes to mimic (default %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="sim seconds per real second (default %(default)s; 60 = a sim minute per second)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to every API answer"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the order plans")
    parser.add_argument(
        "--key-env",
        default="TRACKER_SIM_KEY",
        metavar="VAR",
        help="if this environment variable is set, only its value is accepted as API key; "
        "otherwise any non-empty key is (default %(default)s)",
    )
    parser.add_argument(
        "--refill-too-early-s",
        type=float,
        default=0.0,
        help="sim seconds after completion before a refill is accepted (default 0)",
    )
    parser.add_argument(
        "--refill-window-s",
        type=float,
        default=None,
        help="sim seconds after completion after which refills are refused (default: never)",
    )
    parser.add_argument(
        "--balance", type=_decimal, default=Decimal("1000.00000"), help="starting balance"
    )
    parser.add_argument(
        "--no-natural-drops",
        action="store_true",
        help="orders only drop when told to through POST /admin/drop",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the listening line")
    return parser


def run_sim(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    api_key = os.environ.get(args.key_env) or None
    config = SimConfig(
        dialect=args.dialect,
        speed=args.speed,
        latency_ms=max(0.0, args.latency_ms),
        api_key=api_key,
        refill_too_early_s=max(0.0, args.refill_too_early_s),
        refill_window_s=args.refill_window_s,
        natural_drops=not args.no_natural_drops,
        balance=args.balance.quantize(Decimal("0.00001")),
        seed=args.seed,
    )
    server = SimServer(args.host, args.port, config=config)
    try:
        server.start()
    except OSError as error:
        print(f"sim: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"sim listening on {server.url} dialect={config.dialect}", flush=True)
    if not args.quiet:
        key_rule = f"the key in ${args.key_env}" if api_key else "any non-empty key"
        print(f"admin API on {server.admin_url}/; accepting {key_rule}; Ctrl-C stops", flush=True)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        server.serve_until(stop)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
    return 0
