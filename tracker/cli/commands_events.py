"""``tracker events resend``: deliver ended events to the shop again."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from tracker.cli.db import database, database_now
from tracker.cli.errors import CLIError
from tracker.config import get_settings

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(commands: Any) -> None:
    events = commands.add_parser("events", help="events for the shop (the outbox)")
    actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    resend = actions.add_parser(
        "resend",
        help="deliver ended events again",
        description="Put events that ended back in the outbox, to be delivered again now, "
        "with a fresh TRACKER_WEBHOOK_RETRY_FOR. Without --failed: every delivered or failed "
        "event (for a shop that lost its data); with --failed: only those that failed for "
        "good. Events still being retried are left alone. Delivered events are kept 7 days.",
    )
    resend.add_argument("--failed", action="store_true", help="only events that failed for good")
    resend.add_argument(
        "--since",
        metavar="WHEN",
        help="only events recorded at or after WHEN: an ISO 8601 time (UTC unless it says "
        "otherwise) or a duration ago, like 90s, 30m, 2h, 3d, 1w",
    )
    resend.set_defaults(handler=_resend)


def parse_since(text: str, now: datetime) -> datetime:
    """``2h`` (a duration ago) or an ISO 8601 time; ValueError otherwise."""
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return now - timedelta(seconds=float(duration.group(1)) * _UNIT_SECONDS[duration.group(2)])
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _resend(args: argparse.Namespace) -> int:
    from tracker.outbox.delivery import resend_events, sink_configured

    if args.since is not None:
        try:
            # Checked before anything else: only its form, against any moment.
            parse_since(args.since, datetime.now(UTC))
        except ValueError:
            raise CLIError(
                f"--since {args.since!r} is neither an ISO 8601 time (like 2025-03-01T12:00:00Z) "
                "nor a duration (like 90s, 30m, 2h, 3d, 1w)",
                2,
            ) from None
    if not sink_configured(get_settings()):
        raise CLIError("no TRACKER_WEBHOOK_URL or TRACKER_EVENT_TASK is set: nothing would deliver the events")
    with database() as session:
        # The database's clock, which the events' created_at and the outbox's claims go
        # by: "2h" means two hours before its now, whatever this host's clock says.
        now = database_now(session)
        since = parse_since(args.since, now) if args.since is not None else None
        count = resend_events(session, now, failed_only=args.failed, since=since)
    print(f"resent {count} event{'' if count == 1 else 's'}")
    return 0
