"""The sweep benchmark keeps working: a small-N run on SQLite, end to end."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_benchmark_runs_and_makes_ceil_n_over_100_calls() -> None:
    orders = 1000
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--orders", str(orders), "--db", "sqlite",
         "--latency-ms", "0", "--threads", "4", "--timeout", "240"],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    output = completed.stdout
    print(output)
    calls = re.search(r"status calls / ceil\(N/100\)\s+(\d+) / (\d+)", output)
    assert calls is not None, output
    assert int(calls.group(1)) == int(calls.group(2)) == math.ceil(orders / 100)
    for figure in ("sweep seconds", "orders persisted per second", "worker peak RSS MB", "sweep / floor",
                   "claim query ms", "database size MB", "naive seconds"):
        assert figure in output
