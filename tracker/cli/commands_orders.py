"""``tracker track``, ``tracker orders``, ``tracker order``."""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from tracker.cli.db import database, database_now
from tracker.cli.errors import CLIError
from tracker.cli.output import print_json, print_table
from tracker.cli.progress import progress_bar, stderr_is_terminal
from tracker.core.ids import NotTextError, iter_id_tokens, parse_order_id

# IDs per transaction when reading a file: memory stays flat for a million-line file.
TRACK_CHUNK = 10_000
SHOWN_REJECTIONS = 20
STATUS_CHOICES = ["Pending", "Processing", "In progress", "Completed", "Partial", "Canceled", "Unknown", "Not found", "none"]


def register(commands: Any) -> None:
    track = commands.add_parser(
        "track",
        help="start tracking provider order IDs",
        description="Track order IDs. IDs come as arguments and/or from --file (one file, or '-' "
        "for standard input), separated by newlines, commas or spaces; blank lines and '#' "
        "comments are ignored. Tracking an order twice is harmless.",
    )
    track.add_argument("provider")
    track.add_argument("ids", nargs="*", metavar="ID")
    track.add_argument("--file", metavar="FILE", help="read IDs from FILE, or '-' for stdin")
    track.add_argument("--service", metavar="SID", help="the provider service ID of every order in this call")
    track.set_defaults(handler=_track)

    orders = commands.add_parser("orders", help="list tracked orders")
    orders.add_argument("--provider")
    orders.add_argument("--status", choices=STATUS_CHOICES, metavar="S", help=f"one of: {', '.join(STATUS_CHOICES)}")
    orders.add_argument("--limit", type=int)
    orders.add_argument("--json", action="store_true")
    orders.set_defaults(handler=_orders)

    order = commands.add_parser("order", help="one order with its transition history and refills")
    order.add_argument("provider")
    order.add_argument("order_id")
    order.add_argument("--json", action="store_true")
    order.set_defaults(handler=_order)

    reopen = commands.add_parser(
        "reopen",
        help="put orders that ended Not found back into polling",
        description="Reopen orders that ended Not found (say the provider lost them for a while): "
        "give their IDs, or --status 'Not found' for every such order of the provider.",
    )
    reopen.add_argument("provider")
    reopen.add_argument("ids", nargs="*", metavar="ID")
    reopen.add_argument("--status", metavar="S", help="reopen every order of the provider with this status")
    reopen.set_defaults(handler=_reopen)


def _open_text(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
    try:
        return open(path, encoding="utf-8", errors="strict")  # noqa: SIM115 - closed by caller
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}", 2) from None


def _chunks(handle: TextIO, on_read: Callable[[int], None], size: int = 1 << 16) -> Iterator[str]:
    try:
        while chunk := handle.read(size):
            on_read(len(chunk))
            yield chunk
    except UnicodeDecodeError:
        raise CLIError("the ID file is not UTF-8 text (is it a binary file?)", 2) from None


def _id_tokens(args: argparse.Namespace, on_read: Callable[[int], None]) -> Iterator[str]:
    yield from args.ids
    if args.file is None:
        return
    handle = _open_text(args.file)
    try:
        yield from iter_id_tokens(_chunks(handle, on_read))
    except NotTextError as exc:
        raise CLIError(f"{args.file}: {exc}", 2) from None
    finally:
        if args.file != "-":
            handle.close()


def _file_size(path: str | None) -> int | None:
    """The byte count to show progress against; None (an indeterminate bar) for stdin."""
    if path is None or path == "-":
        return None
    try:
        return os.path.getsize(path) or None
    except OSError:
        return None


def _track(args: argparse.Namespace) -> int:
    from tracker.orders.enqueue import TrackResult, track_orders

    if not args.ids and args.file is None:
        raise CLIError("give order IDs as arguments or with --file", 2)
    total = TrackResult(provider=args.provider)
    rejected_total = 0
    processed = 0
    size = _file_size(args.file)
    read = 0

    def count_read(characters: int) -> None:
        nonlocal read
        read += characters

    tokens = _id_tokens(args, count_read)
    # IDs as arguments are tracked at once; a bar is for files, which may be huge.
    with progress_bar(f"tracking {args.provider}", size, enabled=args.file is not None and stderr_is_terminal()) as bar:
        while chunk := list(itertools.islice(tokens, TRACK_CHUNK)):
            with database() as session:
                result = track_orders(session, args.provider, chunk, service=args.service, now=database_now(session))
            total.provider = result.provider
            total.added += result.added
            total.already_tracked += result.already_tracked
            total.duplicates += result.duplicates
            rejected_total += len(result.rejected)
            room = SHOWN_REJECTIONS - len(total.rejected)
            total.rejected.extend(result.rejected[: max(0, room)])
            processed += len(chunk)
            bar.update(completed=min(read, size) if size else None, detail=f"{processed:,} IDs")
    for given, reason, _ in total.rejected:
        print(f"rejected {given}: {reason}", file=sys.stderr)
    if rejected_total > len(total.rejected):
        print(f"... and {rejected_total - len(total.rejected)} more rejected", file=sys.stderr)
    print(
        f"{total.provider}: {total.added} new, {total.already_tracked} already tracked, "
        f"{rejected_total} rejected" + (f", {total.duplicates} duplicates ignored" if total.duplicates else "")
    )
    # Exit 1 when anything was refused, so scripts notice; the valid IDs are tracked anyway.
    return 1 if rejected_total else 0


def _orders(args: argparse.Namespace) -> int:
    from tracker.providers.lookup import provider_by_name
    from tracker.orders.views import list_orders

    with database(read_only=True) as session:
        if args.provider is not None:
            provider_by_name(session, args.provider)
        views = list_orders(session, provider=args.provider, status=args.status, limit=args.limit)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["PROVIDER", "ORDER", "SERVICE", "STATUS", "REMAINS", "CHARGE", "START", "UPDATED"],
        [
            [v["provider"], v["order_id"], v["service"], v["status"] or "(not polled yet)", v["remains"],
             f"{v['charge']} {v['currency'] or ''}".strip() if v["charge"] else None, v["start_count"], v["updated_at"]]
            for v in views
        ],
    )
    return 0


def _order(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from tracker.db.models import Order
    from tracker.providers.lookup import provider_by_name
    from tracker.orders.views import order_detail

    try:
        external_id = parse_order_id(args.order_id)
    except ValueError as exc:
        raise CLIError(f"order ID {args.order_id!r} {exc}", 2) from None
    with database(read_only=True) as session:
        provider = provider_by_name(session, args.provider)
        order = session.scalar(
            select(Order).where(Order.provider_id == provider.id, Order.external_id == external_id)
        )
        if order is None:
            raise CLIError(f"order {external_id} of {provider.name} is not tracked")
        view = order_detail(session, order, provider.name)
    if args.json:
        print_json(view)
        return 0
    print(f"{view['provider']} order {view['order_id']}  service {view['service'] or '-'}")
    print(f"status {view['status'] or '(not polled yet)'} (raw {view['raw_status']!r})  remains {view['remains']}  "
          f"charge {view['charge']} {view['currency'] or ''}  start_count {view['start_count']}")
    print("history:")
    for event in view["events"]:
        print(f"  {event['at']}  {event['from_status'] or '-'} -> {event['to_status']}  remains {event['remains']}  "
              f"charge {event['charge']}  start {event['start_count']}")
    for refill in view["refills"]:
        print(f"refill {refill['refill_id']}: {refill['status']} (requested {refill['requested_at']})")
    return 0


def _reopen(args: argparse.Namespace) -> int:
    from tracker.orders.reopen import reopen_by_status, reopen_orders

    if bool(args.ids) == bool(args.status):
        raise CLIError("give the order IDs to reopen, or --status 'Not found', not both", 2)
    with database() as session:
        if args.status:
            try:
                count = reopen_by_status(session, args.provider, args.status, now=database_now(session))
            except ValueError as error:
                raise CLIError(str(error), 2) from None
            refused: list[tuple[str, str]] = []
        else:
            result = reopen_orders(session, args.provider, args.ids, now=database_now(session))
            count, refused = result.reopened, result.refused
    for given, reason in refused[:SHOWN_REJECTIONS]:
        print(f"not reopened: {given}: {reason}", file=sys.stderr)
    print(f"reopened {count} order{'' if count == 1 else 's'}; they are polled again at once")
    return 1 if refused else 0
