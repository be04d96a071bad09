"""``tracker demo``: three simulated providers and the whole tracker, watched live."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracker.cli.errors import CLIError


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="watch the tracker work three simulated providers (about a minute)",
        description="Starts three simulated providers (standard, singles and promobox "
        "dialects) and the tracker itself (SQLite in a temporary directory, the bundled "
        "Redis unless TRACKER_BROKER_URL is set, a Celery worker and beat), tracks a few "
        "hundred orders, reports a couple of drops, and shows orders, refills and API calls "
        "live until everything is final. Ends with a summary.",
    )
    demo.add_argument("--seconds", type=_positive(float), default=110.0, help="stop after this many seconds (default 110)")
    demo.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live table")
    demo.add_argument("--speed", type=_positive(float), default=15.0, help="sim seconds per real second (default 15)")
    demo.add_argument("--orders", type=_positive(int), default=100, help="orders per provider (default 100)")
    demo.add_argument("--dir", type=Path, help="work directory to use and keep (default: a temporary one, removed)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from tracker.ops.demo import DemoOptions, run_demo

    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        raise CLIError(f"{args.dir} is not empty: give a new or empty directory", 2)
    return run_demo(
        DemoOptions(
            seconds=args.seconds,
            live=not args.no_live,
            speed=args.speed,
            orders_per_provider=args.orders,
            directory=args.dir,
        )
    )
