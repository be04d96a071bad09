"""``tracker provider add|list|sync``."""

from __future__ import annotations

import argparse
import os
from decimal import Decimal, InvalidOperation
from typing import Any

from tracker.cli.db import database, database_now
from tracker.cli.errors import CLIError
from tracker.cli.output import print_json, print_table
from tracker.cli.progress import progress_bar
from tracker.config import get_settings

SYNC_STEPS = 3


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from None


def register(commands: Any) -> None:
    provider = commands.add_parser("provider", help="register and inspect providers")
    actions = provider.add_subparsers(dest="provider_command", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="register a provider (or update it)",
        description="Register a provider. The API key is read once from the environment "
        "variable named by --key-env, encrypted, and stored; it never goes on a command line.",
    )
    add.add_argument("name")
    add.add_argument("--url", required=True, help="the provider's API v2 URL")
    add.add_argument("--key-env", metavar="VAR", help="environment variable holding the API key")
    add.add_argument("--rate-limit", type=float, metavar="REQ_PER_S", help="max requests per second (default 5)")
    add.add_argument("--refill-days", type=int, metavar="DAYS", help="default guarantee window (default 30)")
    add.add_argument("--batch-size", type=int, help="IDs per status call, 1-100 (default 100)")
    add.add_argument("--poll-interval", type=float, metavar="SECONDS", help="override TRACKER_POLL_INTERVAL")
    add.add_argument("--balance-alert-below", type=_decimal, metavar="AMOUNT", help="alert when the balance drops below")
    add.set_defaults(handler=_add)

    listing = actions.add_parser("list", help="list providers (keys are masked)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    sync = actions.add_parser("sync", help="fetch the services catalog and the balance")
    sync.add_argument("name")
    sync.set_defaults(handler=_sync)


def _read_key(args: argparse.Namespace, exists: bool) -> str | None:
    if args.key_env is None:
        if exists:
            return None
        raise CLIError("a new provider needs --key-env VAR naming the variable that holds its API key", 2)
    value = os.environ.get(args.key_env)
    if value is None or not value.strip():
        raise CLIError(f"environment variable {args.key_env} is not set or empty", 2)
    return value


def _add(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from tracker.db.models import Provider
    from tracker.providers.registry import ProviderSpec, upsert_provider

    with database() as session:
        exists = session.scalar(select(Provider.id).where(Provider.name == args.name)) is not None
        spec = ProviderSpec(
            name=args.name,
            url=args.url,
            api_key=_read_key(args, exists),
            rate_limit=args.rate_limit,
            refill_days=args.refill_days,
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            balance_alert_below=args.balance_alert_below,
        )
        provider, created = upsert_provider(session, spec, get_settings(), database_now(session))
        print(f"{'added' if created else 'updated'} provider {provider.name} (key {provider.key_hint})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from tracker.providers.views import provider_views

    with database() as session:
        views = provider_views(session)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["NAME", "URL", "KEY", "RATE/S", "BATCH", "REFILL DAYS", "SERVICES", "BALANCE", "STATE"],
        [
            [
                view["name"],
                view["url"],
                view["key"],
                view["rate_limit"],
                view["batch_size"],
                view["refill_days"],
                view["services"],
                f"{view['balance']} {view['currency'] or ''}".strip() if view["balance"] else "-",
                _state(view),
            ]
            for view in views
        ],
    )
    return 0


def _state(view: dict[str, Any]) -> str:
    if not view["paused"]:
        return "active"
    state = "paused: " + (view["paused_reason"] or "by an operator")
    if view["key_probe_at"]:
        state += f" (next key probe {view['key_probe_at']})"
    return state


def _sync(args: argparse.Namespace) -> int:
    from tracker.cli.gateway import operator_gateway
    from tracker.providers.catalog import sync_catalog
    from tracker.providers.gateway import ProviderAccess, refuse_plain_http
    from tracker.providers.lookup import provider_by_name

    settings = get_settings()
    with database() as session:
        access = ProviderAccess.of(provider_by_name(session, args.name), settings)
        now = database_now(session)
    # Refused here with the command's own words, before anything is sent.
    refuse_plain_http(access, settings, "services")
    # Three steps: a big catalog takes a while to download, and longer to store.
    with operator_gateway(settings) as gateway, progress_bar(f"syncing {access.name}", SYNC_STEPS) as bar:
        steps = 0

        def on_step(detail: str) -> None:
            nonlocal steps
            bar.update(advance=min(steps, 1), detail=detail)
            steps += 1

        # The operator hears of a failure; pausing the provider is left to the workers.
        result = sync_catalog(access, settings, gateway, now, on_step, record_health=False)
        bar.update(advance=1, detail="done")
    print(
        f"{access.name}: {result.services} services ({result.added} new, {result.with_refill} with refill, "
        f"{result.with_cancel} with cancel); balance {result.balance} {result.currency or ''}".rstrip()
    )
    return 0
