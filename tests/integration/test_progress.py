"""Progress bars of long CLI work: drawn on stderr when it is a terminal (a real pty
here), never when it is a pipe, and never mixed into stdout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.helpers import add_provider, count_orders
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
IDS = 12_000


def run_with_terminal_stderr(
    arguments: list[str], env: dict[str, str], stdin: bytes = b""
) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal on stderr showed, escape codes removed)."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli.main", *arguments],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=terminal,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
    )
    os.close(terminal)
    shown = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = process.communicate(stdin, timeout=120)
    reader.join(timeout=10)
    os.close(controller)
    return process.returncode, stdout.decode(), ANSI.sub("", shown.decode(errors="replace"))


def run_piped(arguments: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker.cli.main", *arguments],
        input=stdin.decode(), env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_track_file_and_stdin_show_progress_on_a_terminal_only(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    add_provider("panel", "http://127.0.0.1:9/api/v2", monkeypatch)
    listing = tmp_path / "ids.txt"
    listing.write_text("# today's orders\n" + "\n".join(str(i) for i in range(1, IDS + 1)) + "\n")

    code, stdout, shown = run_with_terminal_stderr(["track", "panel", "--file", str(listing)], tracker_env)
    assert code == 0, shown
    assert stdout == f"panel: {IDS} new, 0 already tracked, 0 rejected\n"
    assert "tracking panel" in shown and f"{IDS:,} IDs" in shown, shown
    assert count_orders("panel") == IDS

    # Standard input has no size: the bar has no total, the count still moves.
    more = "\n".join(str(i) for i in range(IDS + 1, IDS + 3_001)).encode()
    code, stdout, shown = run_with_terminal_stderr(["track", "panel", "--file", "-"], tracker_env, stdin=more)
    assert code == 0, shown
    assert stdout == "panel: 3000 new, 0 already tracked, 0 rejected\n"
    assert "tracking panel" in shown and "3,000 IDs" in shown, shown

    # A pipe gets the plain line and nothing else, as scripts expect.
    piped = run_piped(["track", "panel", "--file", "-"], tracker_env, stdin=b"1 2 3")
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "panel: 0 new, 3 already tracked, 0 rejected\n", "")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_provider_sync_shows_its_steps_on_a_terminal_only(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard") as sim:
        add_provider("panel", sim.url, monkeypatch)
        code, stdout, shown = run_with_terminal_stderr(["provider", "sync", "panel"], tracker_env)
        assert code == 0, shown
        assert stdout.startswith("panel: 5 services (5 new, 3 with refill, 3 with cancel); balance 1000")
        assert "syncing panel" in shown, shown
        assert sim.stats()["actions"]["services"]["calls"] == 1

        piped = run_piped(["provider", "sync", "panel"], tracker_env)
        assert piped.returncode == 0 and piped.stderr == ""
        assert piped.stdout.startswith("panel: 5 services (0 new,")
