"""Watching real parts from the outside: when a sim was called, what a process listens
on, how much memory a child used; and a PostgreSQL connection killer."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psycopg

from tests.support.databases import connect_mysql, kill_other_mysql_connections
from tracker.config import normalize_database_url
from tracker.sim.server import SimServer


class SimCallLog:
    """Exact arrival times of an in-process sim's API calls, and the moments it answered
    each order's status, taken by wrapping the sim's own request counters. (Sampling the
    counters from a thread would blur the times by however long that thread waited for
    the CPU.)"""

    def __init__(self, sim: SimServer) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[float, str]] = []
        self.polls: dict[int, list[float]] = {}
        stats = sim.provider.stats
        count_call, count_polls = stats.record_call, stats.record_status_polls

        def record_call(action: str, ids: int, over_limit: bool, now: float) -> None:
            with self._lock:
                self.calls.append((now, action))
            count_call(action, ids, over_limit, now)

        def record_status_polls(order_ids: Iterable[int]) -> None:
            polled, now = list(order_ids), time.monotonic()
            with self._lock:
                for order_id in polled:
                    self.polls.setdefault(order_id, []).append(now)
            count_polls(polled)

        setattr(stats, "record_call", record_call)
        setattr(stats, "record_status_polls", record_status_polls)

    def times(self, action: str, since: float = 0.0) -> list[float]:
        with self._lock:
            return [moment for moment, name in self.calls if name == action and moment >= since]

    def polls_since(self, since: float) -> dict[int, list[float]]:
        with self._lock:
            return {key: [m for m in moments if m >= since] for key, moments in self.polls.items()}


def gaps(moments: Sequence[float]) -> list[float]:
    ordered = sorted(moments)
    return [after - before for before, after in zip(ordered, ordered[1:], strict=False)]


# --- sockets ---------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _address_of(hex_address: str) -> tuple[str, int]:
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        # /proc prints IPv6 as four little-endian 32-bit words.
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(socket.AF_INET6, words)
    return host, int(port_hex, 16)


def tcp_sockets() -> Iterator[list[str]]:
    """The columns of every row of /proc/net/tcp and /proc/net/tcp6 (local address at 1,
    state at 3, inode at 9); nothing from a table this system lacks."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            yield line.split()


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(host, port) of every TCP socket the process listens on, from /proc."""
    inodes = _socket_inodes(pid)
    return [
        _address_of(columns[1])
        for columns in tcp_sockets()
        if columns[3] == "0A" and columns[9] in inodes  # 0A: LISTEN
    ]


def wait_for_listening(pid: int, timeout: float) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        found = listening_addresses(pid)
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} listened on nothing within {timeout}s")
        time.sleep(0.1)


# --- memory ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    seconds: float


def run_measuring_memory(
    command: Sequence[str], env: Mapping[str, str], workdir: Path, timeout: float
) -> ChildRun:
    """Run a command to its end and report its own peak resident memory (``wait4``
    gives the rusage of exactly this child, not of every child this process ever had)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(list(command), env=dict(env), stdout=out, stderr=err, cwd=workdir)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"{command[:4]} still running after {timeout}s")
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        returncode=process.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        # Linux reports ru_maxrss in KiB.
        peak_rss_bytes=usage.ru_maxrss * 1024,
        seconds=time.monotonic() - started,
    )


# --- PostgreSQL and MariaDB ------------------------------------------------------------------

TERMINATE_OTHERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


class OnAThread:
    """A loop that runs on a daemon thread from the start of a ``with`` block to its end:
    ``_run`` goes on until ``_stop`` is set (subclasses are dataclasses with both fields)."""

    thread_name = "background"
    _stop: threading.Event
    _thread: threading.Thread | None

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class BackendKiller(OnAThread):
    """Terminates every other connection to the database every ``period`` seconds, on a
    thread, the way a failover or an impatient DBA would."""

    thread_name = "backend-killer"
    database_url: str
    period: float = 0.3
    terminated: int = 0
    rounds: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        url = normalize_database_url(self.database_url)
        if url.startswith("mysql"):
            connection = connect_mysql(url)
            try:
                while not self._stop.wait(self.period):
                    self.terminated += kill_other_mysql_connections(connection)
                    self.rounds += 1
            finally:
                connection.close()
            return
        url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(url, autocommit=True) as connection:
            while not self._stop.wait(self.period):
                killed = connection.execute(TERMINATE_OTHERS).fetchall()
                self.terminated += sum(1 for (ok,) in killed if ok)
                self.rounds += 1
