"""Idle footprint of `tracker run`: what worker + beat + Flower + the bundled Redis hold
and burn on a small VPS while there is nothing to do.

It starts `tracker run` as the README does (SQLite, bundled Redis, Flower with a login)
in a throw-away directory, waits until it says "tracker running" and then ``--settle``
seconds more (start-up work: migrations, the first beat ticks, Flower's first inspect),
and then, over ``--window`` seconds, reads /proc for the whole process tree:

- processes: how many are alive;
- PSS summed (each shared page split between the processes sharing it: what the tree
  really holds) and RSS summed (a shared page counted once per process), both the peak of
  the samples taken every 0.5 s;
- CPU: the tree's user + system seconds over the window, as % of one core, from the
  clock ticks of /proc/<pid>/stat and, finer, from each thread's schedstat (nanoseconds;
  an idle tree uses about 50 ticks a minute, so the ticks round by a few percent).

With ``--cores 0`` the whole tree runs under ``taskset -c 0``, as on a one-core VPS
(one core also means one poll slot: the defaults follow the CPU set).

    python benchmarks/footprint.py                 # all cores of this machine
    python benchmarks/footprint.py --cores 0       # one core
    python benchmarks/footprint.py --window 120
    python benchmarks/footprint.py --tracker /other/venv/bin/tracker   # another install

It prints figures and the targets from docs/performance.md beside them; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procs import Sampler, cpu_seconds, run_seconds, tree, tree_cpu_seconds  # noqa: E402

# docs/performance.md, "Footprint": idle, worker + beat + Flower + Redis.
TARGET_PSS_MB = {"all": 200, "one": 160}
TARGET_CORE_PERCENT = 0.5


def start_tracker(directory: Path, cores: str | None, tracker: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("TRACKER_", "CELERY_", "FLOWER_"))
    }
    env.update(
        TRACKER_STATE_DIR=str(directory / ".tracker"),
        TRACKER_DATABASE_URL=f"sqlite:///{directory / 'tracker.db'}",
        FLOWER_BASIC_AUTH="bench:bench-password",
    )
    command = [tracker, "run", "--flower-port", str(free_port())]
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    process = subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_running(process: subprocess.Popen[str], lines: list[str], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if any(line.startswith("tracker running") for line in lines):
            return time.monotonic() - started
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit("`tracker run` did not start:\n" + "\n".join(lines[-40:]))


def names(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", help="run under taskset -c CORES (e.g. 0 for one core)")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after start-up before measuring")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument(
        "--tracker", default=str(Path(sys.executable).with_name("tracker")),
        help="the tracker command to measure (default: this Python's); another install's, to compare",
    )
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tracker-footprint-") as temporary:
        process, lines = start_tracker(Path(temporary), arguments.cores, arguments.tracker)
        try:
            startup = wait_running(process, lines, timeout=120)
            time.sleep(arguments.settle)
            root = process.pid
            with Sampler(lambda: [root], interval=0.5) as sampler:
                cpu_before = tree_cpu_seconds(root)
                each_before = {pid: cpu_seconds(pid) for pid in tree(root)}
                run_before = {pid: run_seconds(pid) for pid in tree(root)}
                started = time.monotonic()
                time.sleep(arguments.window)
                cpu_used = tree_cpu_seconds(root) - cpu_before
                each_used = {pid: cpu_seconds(pid) - seconds for pid, seconds in each_before.items()}
                each_run = {pid: run_seconds(pid) - seconds for pid, seconds in run_before.items()}
                elapsed = time.monotonic() - started
            alive = tree(root)
            alive_names = names(alive)
            used_by = sorted(zip(names(list(each_used)), each_used.values()))
            run_by = sorted(zip(names(list(each_run)), each_run.values()))
        finally:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    cores = len(os.sched_getaffinity(0)) if arguments.cores is None else len(arguments.cores.split(","))
    scope = "one" if cores == 1 else "all"
    peaks = sampler.peaks
    pss_mb = peaks.pss_kb / 1024
    core_percent = 100 * cpu_used / elapsed
    print(f"tracker run, idle, {cores} core{'s' if cores > 1 else ''}"
          f"{' (taskset -c ' + arguments.cores + ')' if arguments.cores else ''}:")
    print(f"  started in          {startup:.1f} s")
    print(f"  processes           {len(alive)} ({', '.join(sorted(alive_names))})")
    print(f"  PSS summed, peak    {pss_mb:.0f} MB   (target <= {TARGET_PSS_MB[scope]} MB)")
    print(f"  RSS summed, peak    {peaks.rss_kb / 1024:.0f} MB")
    print(f"  CPU over {elapsed:.0f} s       {cpu_used:.2f} s = {core_percent:.2f}% of a core"
          f"   (target <= {TARGET_CORE_PERCENT}%)")
    print("  CPU by process      " + ", ".join(
        f"{name} {seconds:.2f} s" for name, seconds in used_by))
    run_total = sum(each_run.values())
    print(f"  schedstat, {elapsed:.0f} s      {run_total:.3f} s = {100 * run_total / elapsed:.3f}% of a core: " + ", ".join(
        f"{name} {seconds:.3f} s" for name, seconds in run_by))
    if sampler.errors:
        print(f"  sampler errors      {sampler.errors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
