"""CLI start-up benchmark: the median wall time of `tracker --help` and of a few
read-only commands (`tracker orders` first), each run N times (default 10) as a fresh
process, the way an operator or a monitoring script runs them.

The commands read a throw-away SQLite database that `tracker db upgrade` creates first,
with one provider and a few orders tracked, so `tracker orders` prints a real table. It
prints the figures and asserts nothing about time.

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --runs 20

The time is mostly Python importing modules; `python -X importtime -m tracker.cli.main
--help` shows which.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Every run reads the same database; none of these needs the broker or a provider.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("orders",),
    ("orders", "--help"),
    ("order", "bench", "1"),
    ("provider", "list"),
)


def tracker_command() -> list[str]:
    """The installed `tracker` script next to this Python, as an operator runs it."""
    script = Path(sys.executable).with_name("tracker")
    if script.exists():
        return [str(script)]
    found = shutil.which("tracker")
    if found is None:
        raise SystemExit("no `tracker` command found: install the project (pip install -e .) first")
    return [found]


def run(command: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def prepare(env: dict[str, str], tracker: list[str]) -> None:
    subprocess.run([*tracker, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
    env = {**env, "BENCH_PROVIDER_KEY": "benchmark-key"}
    subprocess.run(
        [*tracker, "provider", "add", "bench", "--url", "https://panel.invalid/api/v2", "--key-env", "BENCH_PROVIDER_KEY"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run([*tracker, "track", "bench", *map(str, range(1, 21))], env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command (default 10)")
    options = parser.parse_args()
    tracker = tracker_command()
    with tempfile.TemporaryDirectory(prefix="tracker-cli-startup-") as directory:
        env = {
            **os.environ,
            "TRACKER_DATABASE_URL": f"sqlite:///{directory}/tracker.db",
            "TRACKER_STATE_DIR": directory,
        }
        prepare(env, tracker)
        print(f"median of {options.runs} runs ({sys.version.split()[0]}, {os.cpu_count()} CPUs):")
        for arguments in COMMANDS:
            run([*tracker, *arguments], env)  # warm the OS file cache and __pycache__
            times = [run([*tracker, *arguments], env) for _ in range(options.runs)]
            label = "tracker " + " ".join(arguments)
            print(f"  {label:<28} {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
