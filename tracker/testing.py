"""In-memory stand-ins for the tracker's collaborators, for use-case tests that run in
milliseconds: no Redis, no database server, no HTTP, no subprocess.

The use cases take these as keyword parameters (``unit_of_work=``, ``clock=``) or through
the ``Gateway`` (``rate_limiter``, ``metrics``, ``transport``); their defaults are the
production ones. What is here, as dramatiq's stub broker or procrastinate's
``InMemoryConnector``:

- ``SettableClock``: a clock that moves only when told;
- ``InMemoryRateLimiter``, ``InMemoryCallMetrics``, ``InMemoryBudgets``,
  ``InMemoryInFlight``: the Redis-backed pieces, kept in dicts;
- ``MemoryDatabase``: a throwaway SQLite database in memory, migrated with the shipped
  Alembic scripts, and its unit of work;
- ``ScriptedPanel``: a ``requests`` transport that answers API v2 calls in-process,
  from the orders it is told about or from scripted faults (HTML, 429, broken JSON, a
  connection cut after the panel acted), and records every call without its key.

The integration tests keep testing the real Redis, databases and HTTP.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import requests
import urllib3
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

from tracker.db import migrate
from tracker.db.session import UnitOfWork, configure_sqlite, unit_of_work_on
from tracker.polling.capacity import bucket_tokens, epoch
from tracker.apiv2.client import CallRecord
from tracker.providers.ratelimit import MAX_WAIT_SECONDS, RateLimitBusy

# --- the clock -------------------------------------------------------------------------


class SettableClock:
    """A UTC clock that stands still until ``advance`` or ``set`` moves it."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


# --- the Redis-backed pieces -----------------------------------------------------------


class InMemoryRateLimiter:
    """``CallLimiter`` that never waits. It records every slot taken; a cool-down (a 429's
    Retry-After) refuses calls with ``RateLimitBusy`` until ``clock`` has passed it, or,
    without a clock, until ``lift_cool_downs``."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.acquired: list[tuple[int, float]] = []
        self.cool_downs: dict[int, float] = {}
        self._cooling_until: dict[int, datetime | None] = {}

    def acquire(self, provider_id: int, rate: float, *, max_wait: float = MAX_WAIT_SECONDS) -> float:
        with self._lock:
            left = self._cool_down_left(provider_id)
            if left is not None:
                raise RateLimitBusy(provider_id, left)
            self.acquired.append((provider_id, rate))
        return 0.0

    def cool_down(self, provider_id: int, seconds: float) -> None:
        with self._lock:
            self.cool_downs[provider_id] = max(seconds, self.cool_downs.get(provider_id, 0.0))
            self._cooling_until[provider_id] = (
                self._clock() + timedelta(seconds=seconds) if self._clock is not None else None
            )

    def lift_cool_downs(self) -> None:
        with self._lock:
            self._cooling_until.clear()

    def calls_to(self, provider_id: int) -> int:
        return sum(1 for taken, _ in self.acquired if taken == provider_id)

    def _cool_down_left(self, provider_id: int) -> float | None:
        if provider_id not in self._cooling_until:
            return None
        until = self._cooling_until[provider_id]
        if until is None:
            return self.cool_downs[provider_id]
        assert self._clock is not None
        left = (until - self._clock()).total_seconds()
        return left if left > 0 else None


class InMemoryCallMetrics:
    """``CallRecorder`` keeping every call record, per provider."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[tuple[int, CallRecord]] = []

    def record(self, provider_id: int, call: CallRecord) -> None:
        with self._lock:
            self.records.append((provider_id, call))

    def of(self, provider_id: int) -> list[CallRecord]:
        return [call for owner, call in self.records if owner == provider_id]


class InMemoryBudgets:
    """``CallBudgets`` as ``tracker.polling.capacity.TokenBudgets`` keeps them (the same
    ``bucket_tokens``), in a dict instead of Redis: a bucket is stored when it is spent."""

    def __init__(self, tick_interval: float) -> None:
        self._tick_interval = tick_interval
        # provider id -> (tokens, at (epoch seconds), per_tick), as stored and as last seen
        self.buckets: dict[int, tuple[float, float, int]] = {}
        self._seen: dict[int, tuple[float, float, int]] = {}
        self.spent: list[tuple[int, int]] = []

    def available(self, provider_id: int, per_tick: int, now: datetime, *, most: int) -> int:
        at = epoch(now)
        tokens = bucket_tokens(self.buckets.get(provider_id), at, per_tick, most, self._tick_interval)
        self._seen[provider_id] = (tokens, at, per_tick)
        return int(tokens)

    def spend(self, provider_id: int, calls: int) -> None:
        tokens, at, per_tick = self._seen[provider_id]
        self._seen[provider_id] = self.buckets[provider_id] = (tokens - calls, at, per_tick)
        self.spent.append((provider_id, calls))

    def set_tokens(self, provider_id: int, tokens: float, per_tick: int, now: datetime) -> None:
        """A bucket as a previous run left it."""
        self.buckets[provider_id] = (tokens, epoch(now), per_tick)


class InMemoryInFlight:
    """``tracker.polling.capacity.InFlight`` in a dict: task tokens by the end of their lease."""

    def __init__(self) -> None:
        self.entries: dict[int, dict[str, datetime]] = {}

    def counts(self, provider_ids: Iterable[int], now: datetime) -> dict[int, int]:
        result = {}
        for provider_id in provider_ids:
            live = {token: until for token, until in self.entries.get(provider_id, {}).items() if until > now}
            self.entries[provider_id] = live
            result[provider_id] = len(live)
        return result

    def started(self, provider_id: int, token: str, lease_until: datetime) -> None:
        self.entries.setdefault(provider_id, {})[token] = lease_until

    def finished(self, provider_id: int, token: str) -> None:
        self.entries.get(provider_id, {}).pop(token, None)


# --- the database ----------------------------------------------------------------------

_template_lock = threading.Lock()
_template: sqlite3.Connection | None = None


def _single_connection_engine(connection: sqlite3.Connection) -> Engine:
    engine = create_engine("sqlite://", creator=lambda: connection, poolclass=StaticPool)
    # The production SQLite setup: foreign keys on, BEGIN IMMEDIATE, read-only transactions.
    configure_sqlite(engine)
    return engine


def _migrated_template() -> sqlite3.Connection:
    """One in-memory database per process, migrated once with the shipped Alembic
    scripts; every ``MemoryDatabase`` starts as a copy of it (sqlite3's backup, far
    quicker than migrating again)."""
    global _template
    with _template_lock:
        if _template is None:
            from alembic import command
            from alembic.config import Config

            connection = sqlite3.connect(":memory:", check_same_thread=False)
            engine = _single_connection_engine(connection)
            config = Config()
            config.set_main_option("script_location", migrate.script_location())
            with engine.begin() as bound:
                config.attributes["connection"] = bound
                command.upgrade(config, "head")
            _template = connection
        return _template


class MemoryDatabase:
    """A throwaway SQLite database in memory, with the schema of the migrations' head.

    One connection serves every unit of work, so units of work must not overlap (the use
    cases open one at a time). ``unit_of_work`` is what the use cases take."""

    def __init__(self) -> None:
        self._connection = sqlite3.connect(":memory:", check_same_thread=False)
        _migrated_template().backup(self._connection)
        self.engine = _single_connection_engine(self._connection)
        self.unit_of_work: UnitOfWork = unit_of_work_on(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self._connection.close()

    def __enter__(self) -> MemoryDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the provider ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelCall:
    """One request the panel got: its action and form, the key left out (only whether it
    was the expected one is kept)."""

    action: str
    form: Mapping[str, str]
    key_matched: bool

    def ids(self) -> list[str]:
        for name in ("orders", "refills"):
            if name in self.form:
                return [part for part in self.form[name].split(",") if part]
        for name in ("order", "refill"):
            if name in self.form:
                return [self.form[name]]
        return []


@dataclass(frozen=True, slots=True)
class Scripted:
    """An answer the panel gives once, in place of its model's. ``cut``: the panel acts on
    the request, then the connection drops before any answer (the caller cannot know).
    ``delay``: seconds of real time the panel takes first (``ScriptedPanel.release_held``
    ends the wait early), whatever the caller's timeouts say, as a panel that trickles its
    headers would; then ``timed_out``: the caller's read timeout fires instead of an
    answer (``requests.ReadTimeout``); ``answer``: the panel's model answers."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    cut: bool = False
    delay: float = 0.0
    timed_out: bool = False
    answer: bool = False


def html_page(status: int = 200) -> Scripted:
    return Scripted(status, b"<html><body><h1>Maintenance</h1></body></html>", {"Content-Type": "text/html"})


def too_many_requests(retry_after: float = 30.0) -> Scripted:
    return Scripted(429, b'{"error": "Too many requests"}', {"Retry-After": f"{retry_after:g}"})


def broken_json() -> Scripted:
    return Scripted(200, b'{"status": "In progress", "charge": ', {"Content-Type": "application/json"})


def cut_after_acting() -> Scripted:
    return Scripted(cut=True)


def timed_out_after(seconds: float) -> Scripted:
    """No answer within the caller's read timeout, which fires after ``seconds``."""
    return Scripted(delay=seconds, timed_out=True)


def held_then_answered(seconds: float) -> Scripted:
    """The panel holds the call ``seconds`` (or until released), then answers as usual."""
    return Scripted(delay=seconds, answer=True)


@dataclass(slots=True)
class PanelOrder:
    status: str = "Pending"
    charge: str = "0.50"
    start_count: int = 0
    remains: int = 0
    currency: str = "USD"

    def answer(self) -> dict[str, Any]:
        return {
            "charge": self.charge,
            "start_count": str(self.start_count),
            "status": self.status,
            "remains": str(self.remains),
            "currency": self.currency,
        }


class ScriptedPanel(BaseAdapter):
    """An API v2 panel as a ``requests`` transport (``Gateway(..., transport=panel)``).

    It answers ``status`` (single and ``orders=``), ``refill``, ``refill_status`` and
    ``cancel`` from ``orders`` and ``refill_states``, and ``balance`` and ``services``
    from ``balance`` and ``services``, as JSON. With ``multi_forms`` off it knows only the
    single forms ``order=`` and ``refill=``, like the MSM "SMM Script" family of panels:
    it reads ``order`` and ``refill`` alone, so a ``status`` call with ``orders=``, one ID
    or a hundred, is answered ``{"error": "Order not found."}``, and a ``refill_status``
    call with ``refills=`` ``{"error": "Refill not found"}``. ``script(...)`` queues
    one-off answers
    (``html_page()``, ``too_many_requests()``, ``broken_json()``, ``cut_after_acting()``,
    ``timed_out_after(s)``, ``held_then_answered(s)``) that the next calls get instead,
    whatever their action. Every call is kept in
    ``calls``, its key replaced by whether it matched ``api_key``."""

    def __init__(self, api_key: str) -> None:
        super().__init__()
        # Only a digest is kept, so a test's failure output never shows the key.
        self._key_digest = _digest(api_key)
        self._lock = threading.Lock()
        self.orders: dict[int, PanelOrder] = {}
        self.refill_states: dict[str, str] = {}
        self.refills_made: list[int] = []
        self.cancels_made: list[int] = []
        self.balance = "100.84"
        # Catalog entries as the panel lists them (API v2's ``services`` objects).
        self.services: list[dict[str, Any]] = []
        self.calls: list[PanelCall] = []
        self.multi_forms = True
        self._script: deque[Scripted] = deque()
        self._released = threading.Event()

    def set_order(self, order_id: int, status: str, *, remains: int = 0, start_count: int = 0, charge: str = "0.50") -> None:
        with self._lock:
            self.orders[order_id] = PanelOrder(status, charge, start_count, remains)

    def script(self, *answers: Scripted) -> None:
        with self._lock:
            self._script.extend(answers)

    def actions(self) -> list[str]:
        return [call.action for call in self.calls]

    # requests' adapter interface

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        body = request.body or b""
        raw_form = body.decode() if isinstance(body, bytes) else body
        form = dict(parse_qsl(raw_form, keep_blank_values=True))
        key = form.pop("key", "")
        with self._lock:
            call = PanelCall(form.get("action", ""), form, _digest(key) == self._key_digest)
            self.calls.append(call)
            scripted = self._script.popleft() if self._script else None
        if scripted is not None and scripted.delay:
            self._released.wait(scripted.delay)
        if scripted is not None and scripted.timed_out:
            raise requests.ReadTimeout("Read timed out (scripted)")
        if scripted is None or scripted.cut or scripted.answer:
            with self._lock:
                answer = self._answer(call)
        if scripted is not None and scripted.cut:
            raise requests.ConnectionError("Connection reset by peer (scripted)")
        if scripted is None or scripted.answer:
            scripted = Scripted(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
        return _response(request, scripted)

    def release_held(self) -> None:
        """End every scripted delay now, and those to come."""
        self._released.set()

    def close(self) -> None:
        return None

    def _answer(self, call: PanelCall) -> Any:
        if not call.key_matched:
            return {"error": "Invalid API key"}
        if call.action == "status":
            if "orders" in call.form and not self.multi_forms:
                return {"error": "Order not found."}
            if "orders" in call.form:
                return {order_id: self._order_answer(order_id) for order_id in call.ids()}
            return self._order_answer(call.form.get("order", ""))
        if call.action == "refill":
            order = call.form.get("order", "")
            if not order.isdigit() or int(order) not in self.orders:
                return {"error": "Incorrect order ID"}
            self.refills_made.append(int(order))
            refill_id = str(len(self.refills_made))
            self.refill_states[refill_id] = "Pending"
            return {"refill": refill_id}
        if call.action == "refill_status":
            if "refills" in call.form and not self.multi_forms:
                return {"error": "Refill not found"}
            if "refills" in call.form:
                return [self._refill_answer(refill_id) for refill_id in call.ids()]
            return {"status": self.refill_states.get(call.form.get("refill", ""), "Not found")}
        if call.action == "cancel":
            return [{"order": order_id, "cancel": self._cancel(order_id)} for order_id in call.ids()]
        if call.action == "balance":
            return {"balance": self.balance, "currency": "USD"}
        if call.action == "services":
            return self.services
        return {"error": "Incorrect request"}

    def _cancel(self, order_id: str) -> int | dict[str, str]:
        order = self.orders.get(int(order_id)) if order_id.isdigit() else None
        if order is None:
            return {"error": "Incorrect order ID"}
        if order.status in ("Completed", "Partial", "Canceled"):
            return {"error": "Order cannot be canceled"}
        order.status = "Canceled"
        self.cancels_made.append(int(order_id))
        return 1

    def _order_answer(self, order_id: str) -> dict[str, Any]:
        order = self.orders.get(int(order_id)) if order_id.isdigit() else None
        return order.answer() if order is not None else {"error": "Incorrect order ID"}

    def _refill_answer(self, refill_id: str) -> dict[str, Any]:
        state = self.refill_states.get(refill_id)
        if state is None:
            return {"refill": refill_id, "status": {"error": "Refill not found"}}
        return {"refill": refill_id, "status": state}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _response(request: requests.PreparedRequest, scripted: Scripted) -> requests.Response:
    headers = CaseInsensitiveDict({"Content-Type": "application/json", **scripted.headers})
    response = requests.Response()
    response.status_code = scripted.status
    response.headers = headers
    # The client reads the body through urllib3 (read1, within its deadline), as from a socket.
    response.raw = urllib3.HTTPResponse(
        body=io.BytesIO(scripted.body), headers=dict(headers), status=scripted.status, preload_content=False
    )
    response.url = request.url or ""
    response.request = request
    response.reason = "scripted"
    return response


def call_ids(calls: Iterable[PanelCall], action: str) -> Iterator[str]:
    """Every ID the panel was asked about in ``action`` calls, in order."""
    for call in calls:
        if call.action == action:
            yield from call.ids()
