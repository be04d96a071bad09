"""The ``tracker`` command. Each subcommand lives in its own module; this one wires them.

Start-up: a command imports only what it uses. `tracker --help` (and every
`tracker COMMAND --help`) needs no library beyond the standard one, `tracker orders`
needs SQLAlchemy and the models but not Alembic, Celery, Redis, requests or rich. One
rule keeps it so, in every ``commands_*`` module:

- at the top of the module, only what ``register()`` needs: the standard library and
  the light tracker modules (``tracker.cli.errors``/``output``/``db``/``progress``,
  ``tracker.config``, ``tracker.core.clock``, ``tracker.core.*``);
- every handler (and helper) imports its heavy dependencies (SQLAlchemy, the models,
  the slices, Redis, the provider client, ``tracker.ops.*``) in its first
  lines; names needed only in annotations come under ``if TYPE_CHECKING:``.

``tracker.cli.db`` and ``tracker.cli.progress`` are light to import for the same reason:
they load SQLAlchemy (Alembic only when the schema needs a look) and rich when used.
``tracker/__init__.py`` gives Celery its app lazily, so ``import tracker`` costs nothing.
tests/integration/test_cli_startup.py checks what each command loads;
benchmarks/cli_startup.py measures the time.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence

from tracker import logs
from tracker.cli import (
    commands_demo,
    commands_events,
    commands_exporter,
    commands_orders,
    commands_provider,
    commands_refill,
    commands_run,
    commands_stats,
)
from tracker.cli.errors import CLIError, known_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker",
        description="Keeps an SMM shop's orders in sync with its upstream API v2 providers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands_run.register(commands)
    commands_provider.register(commands)
    commands_orders.register(commands)
    commands_refill.register(commands)
    commands_stats.register(commands)
    commands_exporter.register(commands)
    commands_events.register(commands)
    commands_demo.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sim"]:
        # The simulator owns its options, `tracker sim --help` included.
        from tracker.sim.cli import run_sim

        return run_sim(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    handler = logging.StreamHandler(sys.stderr)
    logs.install(handler)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        code: int = args.handler(args)
    except CLIError as error:
        print(f"tracker: error: {error}", file=sys.stderr)
        return error.exit_code
    except known_errors() as error:
        print(f"tracker: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left early (`tracker stats | head`): nothing more to say.
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as `yes | head` ends
    return code


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so Python's own flush at exit does not report the
    closed pipe a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # stdout is no file (a test's stand-in): nothing will flush it


if __name__ == "__main__":
    raise SystemExit(main())
