"""``tracker db upgrade``, ``tracker run``, ``tracker sim``."""

from __future__ import annotations

import argparse
from typing import Any

from tracker.config import get_settings


def register(commands: Any) -> None:
    db = commands.add_parser("db", help="database maintenance")
    db_actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_actions.add_parser("upgrade", help="apply the Alembic migrations")
    upgrade.set_defaults(handler=_db_upgrade)

    run = commands.add_parser(
        "run",
        help="run worker, beat and Flower together (local use) until Ctrl-C",
        description="Applies the migrations, starts a bundled Redis server unless "
        "TRACKER_BROKER_URL is set, then runs the Celery worker, beat and Flower "
        "(on 127.0.0.1) until Ctrl-C.",
    )
    run.add_argument("--flower-port", type=int, default=5555)
    run.add_argument("--loglevel", default="INFO")
    run.set_defaults(handler=_run)

    flower = commands.add_parser(
        "flower",
        help="run Flower for a deployment (requires FLOWER_BASIC_AUTH outside local mode)",
        description="Starts `celery -A tracker flower`. Outside local mode it refuses to start "
        "without FLOWER_BASIC_AUTH (user:password[,user2:password2]). It binds 127.0.0.1 unless "
        "--address says otherwise.",
    )
    flower.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1; containers pass 0.0.0.0)")
    flower.add_argument("--port", type=int, default=5555)
    flower.set_defaults(handler=_flower)

    # Dispatched before parsing (see tracker.cli.main); listed here for `tracker --help`.
    commands.add_parser("sim", help="run the simulated API v2 provider on 127.0.0.1 (see `tracker sim --help`)")


def _db_upgrade(_args: argparse.Namespace) -> int:
    from tracker.db import migrate

    migrate.upgrade()
    print("database schema is up to date")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tracker.ops.runner import run

    return run(get_settings(), flower_port=args.flower_port, loglevel=args.loglevel)


def _flower(args: argparse.Namespace) -> int:
    import os
    import sys

    from tracker.cli.errors import CLIError

    from pathlib import Path

    from tracker.ops.local_flower import require_flower_auth

    settings = get_settings()
    auth = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
    if not settings.local_mode and ":" not in auth:
        raise CLIError(
            "refusing to start Flower without authentication: set FLOWER_BASIC_AUTH=user:password "
            "(outside local mode Flower shows every task and can enqueue them)"
        )
    address = args.address
    login = require_flower_auth(os.environ, Path(settings.state_dir))
    if login is not None:
        print(f"Flower at http://{address}:{args.port} ({login})", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "celery", "-A", "tracker", "flower", f"--address={address}", f"--port={args.port}"]
    # Flower reads FLOWER_BASIC_AUTH from the environment itself; never put it on argv.
    os.execv(sys.executable, command)
