"""``tracker report-drop``, ``tracker cancel``, ``tracker refill-policy``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tracker.cli.db import database
from tracker.cli.errors import CLIError
from tracker.cli.output import print_json, print_table
from tracker.config import get_settings

if TYPE_CHECKING:
    from tracker.refills.policy import Keep

N = TypeVar("N", int, float)


def register(commands: Any) -> None:
    drop = commands.add_parser(
        "report-drop",
        help="record that an order dropped, so a refill is requested",
        description="Record a drop of a tracked order. When the order is refill-eligible a "
        "refill request is opened and the worker sends it, unless a refill of the order is "
        "in flight (the same drop reported again opens nothing); when it is not eligible "
        "the drop is still recorded and the command exits 1 with the reason.",
    )
    drop.add_argument("provider")
    drop.add_argument("order_id")
    drop.set_defaults(handler=_report_drop)

    cancel = commands.add_parser(
        "cancel",
        help="ask the provider to cancel orders",
        description="Cancel tracked orders whose service allows cancel, at most 100 IDs per "
        "provider call. Other IDs are refused with the reason. Exits 1 unless every "
        "cancel was accepted; the new status arrives through normal polling.",
    )
    cancel.add_argument("provider")
    cancel.add_argument("ids", nargs="+", metavar="ID")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(handler=_cancel)

    policy = commands.add_parser(
        "refill-policy",
        help="set a provider's or a service's guarantee window and auto-refill",
        description="Without --service, sets the provider's defaults; with it, overrides "
        "them for one service (kept across catalog syncs). --auto-refill-hours N requests "
        "a refill every N hours inside the window (0: off; 'inherit' drops the override).",
    )
    policy.add_argument("provider")
    policy.add_argument("--service", metavar="SID")
    policy.add_argument(
        "--refill-days", metavar="DAYS", help="guarantee window in days, or 'inherit'"
    )
    policy.add_argument(
        "--cooldown-hours",
        metavar="HOURS",
        help="hours after a refill was sent before another refill of the same order may go "
        "out, or 'inherit'",
    )
    policy.add_argument(
        "--auto-refill-hours",
        metavar="HOURS",
        help="hours between refills, 0 or 'inherit'",
    )
    policy.set_defaults(handler=_refill_policy)


def _report_drop(args: argparse.Namespace) -> int:
    from tracker.db.clock import database_now
    from tracker.refills.drops import UnknownOrder, report_drop

    try:
        with database() as session:
            # The database's clock, as the worker's: the cool-down is measured from times
            # the workers wrote, and this host's clock may be a minute off theirs.
            now = database_now(session)
            report = report_drop(session, args.provider, args.order_id, settings=get_settings(), now=now)
    except UnknownOrder as error:
        raise CLIError(str(error)) from None
    except ValueError as error:
        raise CLIError(f"order ID {args.order_id!r} {error}", 2) from None
    if not report.eligible:
        raise CLIError(report.describe())
    print(report.describe())
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from tracker.cli.gateway import operator_gateway
    from tracker.orders.cancel import ACCEPTED, cancel_orders

    settings = get_settings()
    with operator_gateway(settings) as gateway:
        lines = cancel_orders(args.provider, args.ids, settings=settings, gateway=gateway)
    if args.json:
        print_json(
            [
                {
                    "order_id": line.order_id,
                    "outcome": line.outcome,
                    "reason": line.reason,
                }
                for line in lines
            ]
        )
    else:
        print_table(
            ["ORDER", "CANCEL", "REASON"],
            [[line.order_id, line.outcome, line.reason] for line in lines],
        )
    return 0 if all(line.outcome == ACCEPTED for line in lines) else 1


def _override(text: str | None, name: str, parse: Callable[[str], N]) -> N | None | Keep:
    """What an option asks for: KEEP when it was not given, None for 'inherit'."""
    from tracker.refills.policy import KEEP

    if text is None:
        return KEEP
    if text.strip().lower() == "inherit":
        return None
    try:
        value = parse(text)
    except ValueError:
        raise CLIError(
            f"{name} must be a number or 'inherit', got {text!r}", 2
        ) from None
    if value < 0:
        raise CLIError(f"{name} cannot be negative", 2)
    return value


def _refill_policy(args: argparse.Namespace) -> int:
    from tracker.core.refills import window_days
    from tracker.refills.policy import PolicyChange, UnknownService, set_provider_policy, set_service_policy

    change = PolicyChange(
        refill_days=_override(args.refill_days, "--refill-days", int),
        auto_refill_hours=_override(args.auto_refill_hours, "--auto-refill-hours", float),
        refill_cooldown_hours=_override(args.cooldown_hours, "--cooldown-hours", float),
    )
    with database() as session:
        if args.service is None:
            try:
                provider = set_provider_policy(session, args.provider, change)
            except ValueError as error:
                raise CLIError(str(error), 2) from None
            print(
                f"{provider.name}: guarantee window {provider.refill_days} days, auto-refill "
                f"{_hours(provider.auto_refill_hours, 'TRACKER_AUTO_REFILL_HOURS')}, refill cool-down "
                f"{_cooldown(provider.refill_cooldown_hours, 'TRACKER_REFILL_COOLDOWN_HOURS')}"
            )
            return 0
        try:
            provider, service = set_service_policy(session, args.provider, args.service, change)
        except ValueError as error:
            raise CLIError(str(error), 2) from None
        except UnknownService as error:
            raise CLIError(str(error)) from None
        print(
            f"{provider.name} service {service.service_id}: refill {'yes' if service.refill else 'no'}, "
            f"guarantee window {window_days(service.refill_days, provider.refill_days)} days, "
            f"auto-refill {_hours(service.auto_refill_hours, 'the provider')}, "
            f"refill cool-down {_cooldown(service.refill_cooldown_hours, 'the provider')}"
        )
    return 0


def _cooldown(hours: float | None, inherited_from: str) -> str:
    return f"as {inherited_from}" if hours is None else f"{hours:g} hours"


def _hours(hours: float | None, inherited_from: str) -> str:
    if hours is None:
        return f"as {inherited_from}"
    return "off" if hours == 0 else f"every {hours:g} hours"
