"""What the multi-host scenario (tests/integration/test_multihost.py) watches and how it
reads what it saw.

- ``SimProcess``: ``tracker sim`` as a process of its own on the machine's side of the
  bridge, one per provider, driven through its admin API (``SimAdmin``). Each counts the
  calls it serves, and the most in any 1 s window, itself.
- ``Sampler``: once a second, on a thread, each sim's counters and, from the database,
  each provider's active orders and how long the least recently polled of them has gone
  unpolled ("staleness"), and the outbox's backlog.
- ``calls_per_sweep`` and ``recovery``: the figures of the result table, from the samples.
- ``order_problems``, ``outbox_problems``, ``delivery_problems``: the final checks, in
  bulk (a query per table, not per order: 30,000 orders).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.integration.helpers import check_history_against_truth, same_money
from tests.support import processes
from tests.support.observe import OnAThread
from tests.support.processes import Proc
from tracker.sim.admin import SimAdmin

LISTENING = "sim listening on "


@dataclass
class SimProcess:
    name: str
    proc: Proc
    admin: SimAdmin
    url: str
    rate_limit: float

    @classmethod
    def start(
        cls, name: str, *, host: str, dialect: str, seed: int, rate_limit: float, env: dict[str, str], log_dir: Path,
    ) -> SimProcess:
        # Niced ahead of the tracker's processes: the sim is the instrument that times the
        # calls, and a sim starved of the CPU would stamp two calls that arrived apart as
        # arriving together.
        command = [
            "nice", "-n", "-5", sys.executable, "-m", "tracker.cli.main", "sim", "--host", host, "--port", "0",
            "--dialect", dialect, "--seed", str(seed), "--no-natural-drops", "--quiet",
        ]
        proc = processes.start(name, command, env, log_dir, die_with_test=True)
        proc.wait_for_output(LISTENING, timeout=30)
        line = next(line for line in proc.output().splitlines() if line.startswith(LISTENING))
        url = line[len(LISTENING):].split()[0]
        admin = SimAdmin(url)
        admin.wait_ready()
        return cls(name, proc, admin, url, rate_limit)


# --- sampling ----------------------------------------------------------------------------------

_PER_PROVIDER = """
SELECT p.name,
       count(*) FILTER (WHERE NOT o.final),
       coalesce(extract(epoch FROM max((clock_timestamp() AT TIME ZONE 'UTC')
                - coalesce(o.last_observed_at, %(registered)s)) FILTER (WHERE NOT o.final)), 0)
FROM providers p LEFT JOIN orders o ON o.provider_id = p.id
GROUP BY p.name
"""
_OUTBOX = "SELECT count(*) FILTER (WHERE NOT final), count(*) FROM outbox_events"


@dataclass(frozen=True, slots=True)
class ProviderSample:
    active: int
    # Seconds since the least recently polled active order was last polled.
    staleness: float
    status_calls: int
    status_ids: int
    # The sim's own count: the most calls of any kind in a 1 s window so far.
    busiest_second: int


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    providers: dict[str, ProviderSample]
    outbox_backlog: int
    outbox_total: int


@dataclass
class Sampler(OnAThread):
    """Samples every ``period`` seconds until stopped. A sample the database or a sim
    could not answer (a restart, a cut) is skipped, not invented."""

    thread_name = "multihost-sampler"

    database_url: str
    sims: dict[str, SimProcess]
    registered: Any  # the naive UTC moment the orders were handed over: staleness before a first poll
    period: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _connection: psycopg.Connection[Any] | None = None

    def _query(self) -> tuple[dict[str, tuple[int, float]], tuple[int, int]]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self.database_url, autocommit=True, connect_timeout=2)
        rows = self._connection.execute(_PER_PROVIDER, {"registered": self.registered}).fetchall()
        backlog, total = self._connection.execute(_OUTBOX).fetchone() or (0, 0)
        return {name: (int(active), float(stale)) for name, active, stale in rows}, (int(backlog), int(total))

    def sample_once(self) -> Sample | None:
        try:
            stats = {name: sim.admin.stats() for name, sim in self.sims.items()}
            counters = {name: found["actions"].get("status", {}) for name, found in stats.items()}
            at = time.monotonic()
            figures, (backlog, total) = self._query()
        except Exception:  # noqa: BLE001 - a restart or a cut: this sample is skipped
            self.failures += 1
            if self._connection is not None:
                self._connection.close()
            self._connection = None
            return None
        sample = Sample(
            at,
            {
                name: ProviderSample(
                    figures.get(name, (0, 0.0))[0], figures.get(name, (0, 0.0))[1],
                    int(counters[name].get("calls", 0)), int(counters[name].get("ids_total", 0)),
                    int(stats[name]["all"]["max_calls_in_any_1s_window"]),
                )
                for name in self.sims
            },
            backlog,
            total,
        )
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample_once()
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def __exit__(self, *_exc: object) -> None:
        super().__exit__()
        if self._connection is not None:
            self._connection.close()

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


# --- the figures -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of the run outside every fault window, where the sweep is measured."""

    name: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class SweepFigure:
    provider: str
    window: str
    calls: int
    ids: int
    mean_active: float
    # calls / (ID-polls / active orders): the calls one pass over every active order took.
    calls_per_sweep: float
    bound: float  # 1.05 x ceil(mean active / 100)

    @property
    def within(self) -> bool:
        return self.calls_per_sweep <= self.bound


def _inside(samples: Sequence[Sample], window: Window) -> list[Sample]:
    return [sample for sample in samples if window.start <= sample.at <= window.end]


def calls_per_sweep(samples: Sequence[Sample], window: Window, provider: str) -> SweepFigure | None:
    """The status calls a full sweep took in ``window``: the calls made there, divided by
    how many times over the active orders their IDs covered (ID-polls / mean active
    orders), as ``test_each_sweep_costs_ceil_active_over_100_status_calls`` counts it;
    None when the window saw no call."""
    inside = _inside(samples, window)
    if len(inside) < 2:
        return None
    first, last = inside[0].providers[provider], inside[-1].providers[provider]
    calls, ids = last.status_calls - first.status_calls, last.status_ids - first.status_ids
    if calls <= 0 or ids <= 0:
        return None
    mean_active = sum(sample.providers[provider].active for sample in inside) / len(inside)
    per_sweep = calls / (ids / mean_active)
    return SweepFigure(provider, window.name, calls, ids, mean_active, per_sweep, 1.05 * math.ceil(mean_active / 100))


def recovery(samples: Sequence[Sample], since: float, until: float, stale_after: float) -> float | None:
    """Seconds from ``since`` until every active order of every provider had been polled
    within ``stale_after`` seconds again, for good (up to ``until``): the last sample in
    which some order had gone unpolled longer, counted from ``since``. 0 when none did;
    None when the run ended still stale."""
    inside = [sample for sample in samples if since <= sample.at <= until]
    if not inside:
        return None
    stale = [sample.at for sample in inside if max(p.staleness for p in sample.providers.values()) > stale_after]
    if not stale:
        return 0.0
    if stale[-1] == inside[-1].at:
        return None
    following = next(sample.at for sample in inside if sample.at > stale[-1])
    return following - since


def peak_staleness(samples: Sequence[Sample], since: float, until: float) -> float:
    """The longest any active order had gone unpolled between ``since`` and ``until``."""
    return max(
        (max(p.staleness for p in sample.providers.values()) for sample in samples if since <= sample.at <= until),
        default=0.0,
    )


def longest_unpolled(samples: Sequence[Sample], windows: Iterable[Window]) -> float:
    """The longest any active order had gone unpolled, over the samples inside ``windows``."""
    return max(
        (max(p.staleness for p in sample.providers.values()) for window in windows for sample in _inside(samples, window)),
        default=0.0,
    )


# --- the final checks, in bulk -----------------------------------------------------------------


def _connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


def order_problems(database_url: str, provider: str, truth: dict[int, dict[str, Any] | None]) -> dict[int, list[str]]:
    """Orders of ``provider`` whose stored state or history differs from the sim's truth,
    that are not final, or whose history has a gap, a duplicate or a half-written count."""
    with _connect(database_url) as connection:
        orders = {
            row[0]: row[1:]
            for row in connection.execute(
                "SELECT o.external_id, o.id, o.final, o.status, o.remains, o.charge, o.start_count, o.event_count "
                "FROM orders o JOIN providers p ON p.id = o.provider_id WHERE p.name = %s",
                (provider,),
            )
        }
        events: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for order_id, seq, from_status, to_status, remains, charge, start_count in connection.execute(
            "SELECT e.order_id, e.seq, e.from_status, e.to_status, e.remains, e.charge, e.start_count "
            "FROM order_events e JOIN orders o ON o.id = e.order_id JOIN providers p ON p.id = o.provider_id "
            "WHERE p.name = %s ORDER BY e.order_id, e.seq",
            (provider,),
        ):
            events[order_id].append(
                {"seq": seq, "from_status": from_status, "to_status": to_status, "remains": remains,
                 "charge": charge, "start_count": start_count}
            )
    problems: dict[int, list[str]] = {}
    for external_id, expected in truth.items():
        stored = orders.get(external_id)
        if stored is None or expected is None:
            problems[external_id] = ["not tracked" if stored is None else "unknown to the sim"]
            continue
        row_id, final, status, remains, charge, start_count, event_count = stored
        history = events.get(row_id, [])
        found: list[str] = []
        if not final or not expected["final"]:
            found.append(f"not final: tracker {status} final={final}, sim {expected['status']} final={expected['final']}")
        if status != expected["status"] or remains != expected["remains"] or start_count != expected["start_count"]:
            found.append(f"state: tracker {status}/{remains}/{start_count}, sim {expected['status']}/{expected['remains']}/{expected['start_count']}")
        if not same_money(charge, expected["charge"]):
            found.append(f"charge: tracker {charge}, sim {expected['charge']}")
        if [event["seq"] for event in history] != list(range(1, len(history) + 1)):
            found.append(f"seq is {[event['seq'] for event in history]}")
        if event_count != len(history):
            found.append(f"event_count {event_count} but {len(history)} events")
        found.extend(check_history_against_truth(history, expected))
        if found:
            problems[external_id] = found
    return problems


_TRANSITION_FIELDS = ("to_status", "remains", "start_count")


def outbox_problems(database_url: str) -> dict[str, list[str]]:
    """Orders whose outbox events are not exactly their history, one event per recorded
    transition (none twice, none missing), and refills likewise."""
    problems: dict[str, list[str]] = defaultdict(list)
    with _connect(database_url) as connection:
        history: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for order_id, *values in connection.execute(
            "SELECT order_id, to_status, remains, start_count FROM order_events ORDER BY order_id, seq"
        ):
            history[order_id].append(tuple(values))
        told: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        refills_told: dict[str, list[str]] = defaultdict(list)
        for order_id, kind, payload in connection.execute(
            "SELECT order_id, kind, payload FROM outbox_events WHERE order_id IS NOT NULL ORDER BY id"
        ):
            body = json.loads(payload)
            if kind == "order.status_changed":
                told[order_id].append(tuple(body[name] for name in _TRANSITION_FIELDS))
            elif kind == "refill.status_changed":
                refills_told[f"{body['provider']}/refill {body['refill_id']}"].append(body["to_status"])
        refill_history: dict[str, list[str]] = defaultdict(list)
        for provider, external_id, to_status in connection.execute(
            "SELECT p.name, r.external_id, e.to_status FROM refill_events e JOIN refills r ON r.id = e.refill_id "
            "JOIN providers p ON p.id = r.provider_id ORDER BY r.id, e.seq"
        ):
            refill_history[f"{provider}/refill {external_id}"].append(to_status)
    for order_id in set(history) | set(told):
        if history.get(order_id, []) != told.get(order_id, []):
            problems[f"order row {order_id}"].append(f"history {history.get(order_id)} but events {told.get(order_id)}")
    for key in set(refill_history) | set(refills_told):
        if refill_history.get(key, []) != refills_told.get(key, []):
            problems[key].append(f"history {refill_history.get(key)} but events {refills_told.get(key)}")
    return dict(problems)


def delivery_problems(database_url: str, accepted: Sequence[str]) -> tuple[dict[str, list[str]], int, int]:
    """Events not delivered, or delivered out of their order's order (by first arrival);
    also how many events there were and how many arrived more than once."""
    first_arrival: dict[str, int] = {}
    for position, event_id in enumerate(accepted):
        first_arrival.setdefault(event_id, position)
    repeats = len(accepted) - len(first_arrival)
    problems: dict[str, list[str]] = defaultdict(list)
    with _connect(database_url) as connection:
        rows = connection.execute(
            "SELECT event_id, order_id, final, delivered_at IS NOT NULL FROM outbox_events ORDER BY id"
        ).fetchall()
    by_order: dict[int, list[str]] = defaultdict(list)
    for event_id, order_id, final, delivered in rows:
        if not (final and delivered):
            problems[event_id].append("not delivered (the outbox)")
        if event_id not in first_arrival:
            problems[event_id].append("never reached the shop")
        if order_id is not None:
            by_order[order_id].append(event_id)
    for order_id, event_ids in by_order.items():
        arrivals = [first_arrival[event_id] for event_id in event_ids if event_id in first_arrival]
        if arrivals != sorted(arrivals):
            problems[f"order row {order_id}"].append("events arrived out of order")
    return dict(problems), len(rows), repeats


# --- CPU, for the sizing rule ------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU seconds the processes have used so far (those gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def children_of(parent: int) -> list[int]:
    """``parent`` and its direct children (a PostgreSQL server's backends and workers)."""
    found = [parent]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
