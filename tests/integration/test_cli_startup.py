"""The `tracker` command imports only what the command it runs uses: help needs no
library at all, the read-only commands need SQLAlchemy (and Redis for stats) but neither
Celery nor Alembic nor an HTTP client. Start-up time itself is measured by
benchmarks/cli_startup.py, not here."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.integration.helpers import add_provider
from tracker.cli.main import build_parser
from tracker.cli.main import main as tracker_cli
from tracker.db.session import unit_of_work

pytestmark = pytest.mark.integration

# Runs one command as `tracker` would, then writes the names of the loaded modules.
PROBE = """
import json, sys
from tracker.cli.main import main
try:
    code = main(sys.argv[2:])
except SystemExit as stop:
    code = stop.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""

# Libraries no help text needs; the CLI imports them only in the commands that use them.
LIBRARIES = (
    "sqlalchemy", "alembic", "celery", "kombu", "billiard", "redis", "requests", "urllib3",
    "rich", "cryptography", "psycopg", "prometheus_client", "flower", "tornado",
)
# The tracker's own heavy parts, none of which a read-only command needs.
TRACKER_PARTS = ("tracker.worker", "tracker.polling", "tracker.apiv2.client", "tracker.sim", "tracker.ops")
# What the read-only commands need besides the tracker's own modules.
DATABASE = ("sqlalchemy", "psycopg")


def database_layer(database_url: str) -> tuple[str, ...]:
    # PyMySQL loads cryptography itself, for MySQL's authentication plugins.
    return (*DATABASE, "cryptography") if database_url.startswith("mysql") else DATABASE


def loaded_after(arguments: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[object, set[str]]:
    """(exit code, every module loaded) after `tracker ARGUMENTS` in a fresh interpreter."""
    report = tmp_path / "modules.json"
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *arguments],
        capture_output=True, env=env, timeout=120, text=True,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(report.read_text())
    return result["code"], set(result["modules"])


def heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    """Which of LIBRARIES and TRACKER_PARTS are loaded (in part), except those in ``allowed``."""
    return sorted(
        part
        for part in (*LIBRARIES, *TRACKER_PARTS)
        if part not in allowed and any(name == part or name.startswith(part + ".") for name in modules)
    )


def command_paths() -> list[list[str]]:
    """Every command and subcommand of the parser, as argument lists (``sim`` has its own)."""
    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        paths = [prefix]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    if prefix + [name] != ["sim"]:
                        paths.extend(walk(child, prefix + [name]))
        return paths

    return walk(build_parser(), [])


def test_help_of_every_command_imports_no_library(tmp_path: Path) -> None:
    paths = command_paths()
    assert ["orders"] in paths and ["provider", "list"] in paths and ["db", "upgrade"] in paths
    for path in paths:
        code, modules = loaded_after([*path, "--help"], tmp_path)
        assert code == 0, path
        found = heavy(modules)
        assert not found, f"tracker {' '.join(path)} --help imports {found}"


@pytest.mark.parametrize(
    "command",
    [["orders"], ["orders", "--status", "Pending", "--json"], ["order", "panel", "11"], ["provider", "list"],
     ["track", "panel", "12", "13"]],
    ids=" ".join,
)
def test_everyday_commands_import_the_database_layer_only(
    command: list[str], tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    add_provider("panel", "https://panel.example/api/v2", monkeypatch)
    assert tracker_cli(["track", "panel", "11"]) == 0
    code, modules = loaded_after(command, tmp_path, tracker_env)
    assert code == 0
    assert "sqlalchemy" in modules and "tracker.db.models" in modules
    found = heavy(modules, allowed=database_layer(tracker_env["TRACKER_DATABASE_URL"]))
    assert not found, f"tracker {' '.join(command)} imports {found}"


def test_stats_imports_the_database_layer_and_redis_only(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    add_provider("panel", "https://panel.example/api/v2", monkeypatch)
    code, modules = loaded_after(["stats"], tmp_path, tracker_env)
    assert code == 0
    # The Redis client itself loads cryptography (to check its version).
    found = heavy(modules, allowed=(*DATABASE, "redis", "cryptography"))
    assert not found, f"tracker stats imports {found}"


def test_a_schema_behind_the_code_is_still_refused_outside_local_mode(
    tracker_env: dict[str, str], tmp_path: Path
) -> None:
    with unit_of_work() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    completed = subprocess.run(
        [sys.executable, "-m", "tracker.cli.main", "orders"], capture_output=True, env=tracker_env, timeout=120, text=True
    )
    assert completed.returncode == 1
    assert "the database schema is not up to date: run `tracker db upgrade` first" in completed.stderr
