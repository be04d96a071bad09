"""Processes whose wall clock is off, as on a host whose clock is a minute wrong: Debian's
``faketime`` (libfaketime, preloaded into the process and every child it forks).

Only the wall clock is shifted (``FAKETIME_DONT_FAKE_MONOTONIC``): a real host a minute
off still measures elapsed time correctly, and Celery's timers run on the monotonic clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

FAKETIME = "/usr/bin/faketime"


def faketime_available() -> str | None:
    """The faketime command, or None when it is not installed."""
    return shutil.which("faketime") or (FAKETIME if os.access(FAKETIME, os.X_OK) else None)


def require_faketime() -> str:
    command = faketime_available()
    if command is None:
        pytest.skip("faketime is not installed (Debian's faketime package; .ci/run installs it)")
    return command


def skewed(command: list[str], offset_seconds: float) -> list[str]:
    """``command`` run with its wall clock ``offset_seconds`` off (negative: behind)."""
    return [require_faketime(), "-f", f"{offset_seconds:+g}s", *command]


def skewed_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a skewed process: its monotonic clock stays the host's."""
    return {**env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def run_python(code: str, offset_seconds: float, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run Python ``code`` with the wall clock ``offset_seconds`` off; what it printed."""
    completed = subprocess.run(
        skewed([sys.executable, "-c", code], offset_seconds),
        env=skewed_env(dict(os.environ if env is None else env)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"skewed process failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return completed.stdout
