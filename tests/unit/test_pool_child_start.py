"""What a worker's pool child does as it starts, with the hooks a worker installs.

Run in a fresh interpreter each: what a child imports, and the process-wide prctl state,
must not depend on what this test process has done before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The calls Celery's pool child makes first (celery.concurrency.prefork.process_initializer),
# after the worker's own worker_init hooks have run in its main process.
CHILD_START = """
import ctypes, json, sys
from celery import platforms
from celery.signals import worker_init
import tracker.worker.app

worker_init.send(sender=None)
platforms.set_pdeathsig("SIGKILL")
death_signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal), 0, 0, 0)  # PR_GET_PDEATHSIG
print(json.dumps({
    "death_signal": death_signal.value,
    "c_parser_loaded": sorted(name for name in sys.modules if name.startswith("pycparser")),
}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_pool_child_dies_with_its_worker_without_building_cffis_c_parser(tmp_path: Path) -> None:
    """billiard sets the death signal through cffi when cffi is importable (cryptography
    brings it), and cffi parses the declaration with pycparser: 6 MB in every child. The
    signal must still be set, through ctypes."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(
        TRACKER_DATABASE_URL=f"sqlite:///{tmp_path / 'tracker.db'}",
        TRACKER_STATE_DIR=str(tmp_path / "state"),
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD_START], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["death_signal"] == 9, child
    assert child["c_parser_loaded"] == [], child
