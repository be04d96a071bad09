"""What the benchmarks read from /proc: a worker's whole process tree, the database
server's processes, and the connections open to the sim.

A Celery worker may be one process (the threads pool) or a main process with forked
children (prefork), and prefork replaces children as they go. So:

- CPU of a tree is, summed over its live processes, user + system time plus the time of
  their children that already ended (cutime + cstime: a parent that reaps a child adds
  the child's time to its own). A difference of two such readings counts a replaced
  child's time once, however often the tree was read in between.
- Memory is sampled every ~0.5 s while the sweep runs (``Sampler``), and the peak of the
  sum over the live processes is kept: VmHWM (each process's own peak RSS) and PSS
  (smaps_rollup). Forked children share their parent's pages copy-on-write; RSS counts a
  shared page once per process, PSS splits it between them, so the PSS sum is what the
  tree really holds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.support.observe import tcp_sockets

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PG_SHARED_PROCESSES = ("checkpointer", "background writer", "walwriter")


def children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (a child is listed under the thread
    that forked it, which need not be the main one)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    pids = [pid]
    index = 0
    while index < len(pids):
        pids.extend(child for child in children(pids[index]) if child not in pids)
        index += 1
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces and parentheses.
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of a process (all its threads); with ``reaped_children``,
    plus those of its children that ended and were waited for."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def run_seconds(pid: int) -> float:
    """Seconds the process's live threads have run, from ``/proc/<pid>/task/*/schedstat``
    (nanoseconds): an idle process uses a few clock ticks a minute, where the 10 ms ticks of
    ``cpu_seconds`` round by more than the differences being measured. Threads that ended
    are not counted."""
    total_ns = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total_ns / 1e9


def start_ticks(pid: int) -> int:
    """When the process started (clock ticks since boot): with the pid, a process's identity."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else -1


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(member, reaped_children=True) for member in tree(pid))


def status_kb(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def established_to_port(port: int) -> int:
    """Established TCP connections whose local end is ``port`` (the server's side)."""
    wanted = f":{port:04X}"
    return sum(1 for columns in tcp_sockets() if len(columns) > 3 and columns[3] == "01" and columns[1].endswith(wanted))


class DatabaseCpu:
    """CPU seconds a database server spent for us between ``start()`` and ``stop()``.

    PostgreSQL: the backends connected to our database (and autovacuum on it) plus the
    server-wide WAL writer, checkpointer and background writer, which other users of the
    server also keep busy. Backends are read at every ``sample()``; one that starts after
    ``start()`` counts from 0 (a forked process starts with no CPU time), one that ends
    between samples loses its last interval. MariaDB/MySQL: the whole server process
    (one process; other users' work included). SQLite: nothing (it runs inside the
    workers, whose CPU already holds it)."""

    def __init__(self, kind: str, admin_url: str | None = None, database: str | None = None) -> None:
        self.kind = kind
        self._admin_url = admin_url
        self._database = database
        self._first: dict[tuple[int, int], float] = {}
        self._last: dict[tuple[int, int], float] = {}
        self._started = False
        self._lock = threading.RLock()
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None

    @property
    def measured(self) -> bool:
        return self.kind in ("postgresql", "mariadb")

    def _pids(self) -> list[int]:
        if self.kind == "postgresql":
            if self._connection is None:
                assert self._admin_url is not None
                self._connection = psycopg.connect(self._admin_url.replace("postgresql+psycopg://", "postgresql://"),
                                                   autocommit=True)
            rows = self._connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s OR backend_type = ANY(%s)",
                (self._database, list(PG_SHARED_PROCESSES)),
            ).fetchall()
            return [int(str(row[0])) for row in rows]
        if self.kind == "mariadb":
            return [pid for pid in _pids_named(("mariadbd", "mysqld"))]
        return []

    def sample(self) -> None:
        if not self.measured:
            return
        with self._lock:
            for pid in self._pids():
                key = (pid, start_ticks(pid))
                seconds = cpu_seconds(pid)
                if key not in self._first:
                    self._first[key] = seconds if not self._started else 0.0
                self._last[key] = seconds

    def start(self) -> None:
        with self._lock:
            self._first.clear()
            self._last.clear()
            self._started = False
            self.sample()
            self._started = True

    def used(self) -> float:
        with self._lock:
            return sum(self._last[key] - self._first[key] for key in self._last)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _pids_named(names: Iterable[str]) -> list[int]:
    wanted = set(names)
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")] in wanted:
            found.append(int(stat.parent.name))
    return found


@dataclass
class TreePeaks:
    """Peaks over the samples of the sums over all live processes of some trees."""

    hwm_kb: int = 0
    rss_kb: int = 0
    pss_kb: int = 0
    processes: int = 0
    pids_seen: set[tuple[int, int]] = field(default_factory=set)


class Sampler:
    """Every ``interval`` seconds, in a thread: the worker trees' memory, connections open
    to the sim's port, and the database server's CPU."""

    def __init__(self, roots: Callable[[], list[int]], *, interval: float = 0.5, sim_port: int | None = None,
                 database_cpu: DatabaseCpu | None = None) -> None:
        self._roots = roots
        self._interval = interval
        self._sim_port = sim_port
        self._database_cpu = database_cpu
        self.peaks = TreePeaks()
        self.sim_connections_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self) -> None:
        pids = [pid for root in self._roots() for pid in tree(root)]
        hwm = sum(status_kb(pid, "VmHWM") for pid in pids)
        rss = sum(status_kb(pid, "VmRSS") for pid in pids)
        pss = sum(pss_kb(pid) for pid in pids)
        peaks = self.peaks
        peaks.hwm_kb = max(peaks.hwm_kb, hwm)
        peaks.rss_kb = max(peaks.rss_kb, rss)
        peaks.pss_kb = max(peaks.pss_kb, pss)
        peaks.processes = max(peaks.processes, len(pids))
        peaks.pids_seen.update((pid, start_ticks(pid)) for pid in pids)
        if self._sim_port is not None:
            self.sim_connections_peak = max(self.sim_connections_peak, established_to_port(self._sim_port))
        if self._database_cpu is not None:
            self._database_cpu.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # a sampler error must not end the benchmark
                if len(self.errors) < 5:
                    self.errors.append(repr(exc))
            self._stop.wait(max(0.05, self._interval - (time.monotonic() - started)))
