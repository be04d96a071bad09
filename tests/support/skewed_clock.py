"""Processes whose wall clock is off, as on a host whose clock is a minute wrong: Debian's
``faketime`` (libfaketime, preloaded into the process and every child it forks).

Only the wall clock is shifted (``FAKETIME_DONT_FAKE_MONOTONIC``): a real host a minute
off still measures elapsed time correctly, and with a faked monotonic clock every timed
wait of a Python thread hangs (the kernel waits for a monotonic time decades away). That
setting breaks Python 3.11's ``time.sleep`` in libfaketime 0.9.10, which
``faketime_site/sitecustomize.py`` works around in the skewed processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FAKETIME = "/usr/bin/faketime"
SITE = Path(__file__).resolve().parent / "faketime_site"


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
    """``env`` for a skewed process: its monotonic clock stays the host's, and its
    ``time.sleep`` works (see the module's docstring)."""
    path = os.pathsep.join(part for part in (str(SITE), env.get("PYTHONPATH", "")) if part)
    return {**env, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": path}


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
