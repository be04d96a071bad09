"""The simulated provider's state and rules, independent of HTTP.

Orders live in batches (see ``model.OrderBatch``): one ``add`` is a batch of one, a bulk
seed of a million orders is a single batch, and an order's plan is recomputed from
``(seed, id, batch)`` whenever it is needed. Only what clients *do* to orders is stored
per order, sparsely: cancel requests, drops and refills. Reads take no lock; every
mutation holds ``self._lock``.

Rules enforced here (the error wording lives in ``dialects``):

- ``add``: the service must exist, the link be non-empty, the quantity within the
  service's min/max (``runs`` multiplies it), and the balance cover the charge.
- ``refill``: the service has refill; the order is Completed or Partial; at least
  ``refill_too_early_s`` sim s passed since it became final; not later than
  ``refill_window_s`` (when set); no other refill of the order still running. A refill
  restores what dropped and no refill has put back yet; if that is nothing it is Rejected.
- ``cancel``: the service has cancel; the order is Pending or In progress; one request per
  order. It takes effect ``cancel_delay_s`` later.
- Balance: ``add`` deducts the full charge. Refunds of canceled and partial orders are not
  credited back (the balance is a plain counter for tests of the funds check).
- Order and refill ids keep increasing across ``reset``, so an id is never reused.
"""

from __future__ import annotations

import hmac
import threading
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from tracker.core.status import OrderStatus, RefillStatus
from tracker.sim import dialects as msg
from tracker.sim.catalog import DEFAULT_CATALOG, ServiceSpec, catalog_by_id
from tracker.sim.clock import SimClock
from tracker.sim.dialects import Dialect, dialect_named
from tracker.sim.faults import FaultQueue, HoldGate
from tracker.sim.model import (
    MONEY_QUANTUM,
    OrderBatch,
    Outcome,
    Plan,
    RefillPlan,
    SimOrderState,
    charge_for,
    final_at,
    make_plan,
    make_refill,
    natural_dropped,
    outstanding_drop,
    refill_restored_at,
    refill_status_at,
    refill_timeline,
    state_at,
    target_count,
    timeline,
)
from tracker.sim.stats import RequestStats

MAX_SEED_COUNT = 5_000_000
# Plans are pure functions of (seed, id, batch); caching the recently used ones makes the
# polls of a working set of orders cheap without holding a plan per order.
PLAN_CACHE_SIZE = 100_000


@dataclass(slots=True)
class SimConfig:
    dialect: str = "standard"
    speed: float = 1.0
    latency_ms: float = 0.0
    # None: any non-empty key is accepted.
    api_key: str | None = None
    refill_too_early_s: float = 0.0
    # None: refills are accepted however long ago the order finished.
    refill_window_s: float | None = None
    track_per_id: bool = False
    # A one-ID ``orders=`` status call answered in the single ``order=`` form: the order's
    # status object, or a top-level {"error": "Incorrect order ID"} (as some panels do).
    single_id_orders_as_order: bool = False
    natural_drops: bool = True
    cancel_delay_s: float = 10.0
    # None: drawn per refill (5-30 s pending, 20-120 s in progress).
    refill_pending_s: float | None = None
    refill_progress_s: float | None = None
    currency: str = "USD"
    balance: Decimal = Decimal("1000.00000")
    seed: int = 1

    def public_view(self) -> dict[str, Any]:
        """The configuration without the key itself."""
        view: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "api_key":
                view["api_key_set"] = value is not None
            elif isinstance(value, Decimal):
                view[item.name] = str(value)
            else:
                view[item.name] = value
        return view


class AdminError(ValueError):
    """Bad admin input; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _OrderStore:
    """Batches sorted by first id; an order is found by bisecting on first ids."""

    def __init__(self) -> None:
        self.firsts: list[int] = []
        self.batches: list[OrderBatch] = []
        self.total = 0

    def append(self, batch: OrderBatch) -> None:
        self.batches.append(batch)
        self.firsts.append(batch.first_id)
        self.total += batch.count

    def batch_of(self, order_id: int) -> OrderBatch | None:
        index = bisect_right(self.firsts, order_id) - 1
        if index < 0:
            return None
        batch = self.batches[index]
        return batch if order_id <= batch.last_id else None


class _Activity:
    """What clients did to orders: sparse, keyed by order id."""

    def __init__(self) -> None:
        # order id -> (requested at, takes effect at)
        self.cancels: dict[int, tuple[float, float]] = {}
        # order id -> [(at, amount)]
        self.drops: dict[int, list[tuple[float, int]]] = {}
        self.refills: dict[int, RefillPlan] = {}
        self.refills_of_order: dict[int, list[RefillPlan]] = {}


def _as_float(value: Any, name: str, *, minimum: float = 0.0, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise AdminError(f"{name} must be a number >= {minimum:g}")
    return float(value)


def _as_int(value: Any, name: str, *, minimum: int = 0, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AdminError(f"{name} must be an integer >= {minimum}")
    return value


def _as_bool(value: Any, name: str, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        raise AdminError(f"{name} must be true or false")
    return value


def _money_text(value: Decimal) -> str:
    return str(value.quantize(MONEY_QUANTUM))


class SimProvider:
    def __init__(
        self, config: SimConfig | None = None, catalog: tuple[ServiceSpec, ...] = DEFAULT_CATALOG
    ) -> None:
        self._startup = replace(config) if config is not None else SimConfig()
        self.config = replace(self._startup)
        dialect_named(self.config.dialect)  # fail fast on a bad name
        self._startup_catalog = catalog
        self.catalog = catalog
        self.services = catalog_by_id(catalog)
        self.clock = SimClock(self.config.speed)
        self.stats = RequestStats()
        self.stats.track_per_id = self.config.track_per_id
        self.faults = FaultQueue(self.config.seed)
        self.gate = HoldGate()
        self._lock = threading.Lock()
        self._orders = _OrderStore()
        self._plans: dict[int, Plan] = {}
        self._activity = _Activity()
        self._next_order_id = 1
        self._next_refill_id = 1
        self._balance = self.config.balance

    # -- small accessors -----------------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        return dialect_named(self.config.dialect)

    @property
    def currency(self) -> str:
        return self.config.currency

    @property
    def balance(self) -> Decimal:
        return self._balance

    def now(self) -> float:
        return self.clock.now()

    def key_ok(self, key: str) -> bool:
        expected = self.config.api_key
        if not key:
            return False
        if expected is None:
            return True
        return hmac.compare_digest(key.encode(), expected.encode())

    def plan(self, order_id: int) -> Plan | None:
        # Read the cache before the store: reset() swaps the store first, so a plan of a
        # forgotten order can never land in the new cache.
        plans = self._plans
        plan = plans.get(order_id)
        if plan is not None:
            return plan
        batch = self._orders.batch_of(order_id)
        if batch is None:
            return None
        plan = make_plan(
            self.config.seed,
            order_id,
            batch,
            self.services[batch.service_id],
            self.config.natural_drops,
        )
        if len(plans) >= PLAN_CACHE_SIZE:
            plans.clear()  # crude but O(1) per call on average, and plans are cheap to redo
        plans[order_id] = plan
        return plan

    def cancel_at(self, order_id: int) -> float | None:
        cancel = self._activity.cancels.get(order_id)
        return cancel[1] if cancel is not None else None

    def order_state(self, order_id: int, t: float) -> SimOrderState | None:
        plan = self.plan(order_id)
        if plan is None:
            return None
        return state_at(plan, t, self.cancel_at(order_id))

    def _dropped(self, plan: Plan, state: SimOrderState, t: float) -> int:
        manual = self._activity.drops.get(plan.order_id, ())
        return natural_dropped(plan, state, t) + sum(amount for at, amount in manual if at <= t)

    def _restored(self, order_id: int, t: float) -> int:
        return sum(
            refill_restored_at(refill, t)
            for refill in self._activity.refills_of_order.get(order_id, ())
        )

    # -- API actions ---------------------------------------------------------------------

    def add_order(self, service: ServiceSpec, link: str, quantity: int) -> int | str:
        """Create one order; returns its id, or the provider's error message."""
        charge = charge_for(service.rate, quantity)
        with self._lock:
            if charge > self._balance:
                return msg.ERR_NOT_ENOUGH_FUNDS
            self._balance -= charge
            order_id = self._next_order_id
            self._next_order_id += 1
            self._orders.append(
                OrderBatch(order_id, 1, self.now(), service.service_id, quantity, link)
            )
            return order_id

    def request_refill(self, order_id: int) -> int | str:
        """Create a refill; returns its id, or the provider's error message."""
        plan = self.plan(order_id)
        if plan is None:
            return msg.ERR_ORDER_NOT_FOUND
        if not self.services[plan.service_id].refill:
            return msg.ERR_REFILL_DISABLED
        with self._lock:
            t = self.now()
            cancel_at = self.cancel_at(order_id)
            state = state_at(plan, t, cancel_at)
            if not state.final or state.status not in (OrderStatus.COMPLETED, OrderStatus.PARTIAL):
                return msg.ERR_NOT_COMPLETED
            since_final = t - final_at(plan, cancel_at)
            if since_final < self.config.refill_too_early_s:
                return msg.ERR_TOO_EARLY
            window = self.config.refill_window_s
            if window is not None and since_final > window:
                return msg.ERR_REFILL_EXPIRED
            earlier = self._activity.refills_of_order.setdefault(order_id, [])
            if earlier and t < earlier[-1].final_at:
                return msg.ERR_REFILL_ACTIVE
            restore = outstanding_drop(self._dropped(plan, state, t), earlier, t)
            refill = make_refill(
                self.config.seed,
                self._next_refill_id,
                order_id,
                t,
                restore,
                self.config.refill_pending_s,
                self.config.refill_progress_s,
            )
            self._next_refill_id += 1
            self._activity.refills[refill.refill_id] = refill
            earlier.append(refill)
            return refill.refill_id

    def refill_status(self, refill_id: int, t: float) -> RefillStatus | None:
        refill = self._activity.refills.get(refill_id)
        return refill_status_at(refill, t) if refill is not None else None

    def request_cancel(self, order_id: int) -> str | None:
        """Accept a cancel request; returns None, or the provider's error message."""
        plan = self.plan(order_id)
        if plan is None:
            return msg.ERR_ORDER_NOT_FOUND
        if not self.services[plan.service_id].cancel:
            return msg.ERR_CANCEL_DISABLED
        with self._lock:
            t = self.now()
            if state_at(plan, t, self.cancel_at(order_id)).final:
                return msg.ERR_CANCEL_FINAL
            if order_id in self._activity.cancels:
                return msg.ERR_CANCEL_REQUESTED
            self._activity.cancels[order_id] = (t, t + self.config.cancel_delay_s)
            return None

    # -- admin operations ----------------------------------------------------------------

    def seed_orders(self, spec: Mapping[str, Any]) -> OrderBatch:
        count = _as_int(spec.get("count", 1), "count", minimum=1)
        if count > MAX_SEED_COUNT:
            raise AdminError(f"count must be at most {MAX_SEED_COUNT}")
        service_id = _as_int(spec.get("service", 1), "service", minimum=1)
        if service_id not in self.services:
            raise AdminError(f"unknown service {service_id}")
        outcome_text = spec.get("outcome")
        try:
            outcome = Outcome(outcome_text) if outcome_text is not None else None
        except ValueError:
            raise AdminError("outcome must be Completed, Partial, Canceled or null") from None
        link = spec.get("link", "https://example.com/sim-target")
        if not isinstance(link, str) or not link:
            raise AdminError("link must be a non-empty string")
        quantity = _as_int(spec.get("quantity"), "quantity", minimum=1, allow_none=True)
        pending_s = _as_float(spec.get("pending_s"), "pending_s", allow_none=True)
        progress_s = _as_float(spec.get("progress_s"), "progress_s", allow_none=True)
        age_s = _as_float(spec.get("age_s", 0.0), "age_s")
        start_count = _as_int(spec.get("start_count"), "start_count", allow_none=True)
        natural_drop = _as_bool(spec.get("natural_drop"), "natural_drop", allow_none=True)
        with self._lock:
            batch = OrderBatch(
                first_id=self._next_order_id,
                count=count,
                created_at=self.now() - age_s,
                service_id=service_id,
                quantity=quantity,
                link=link,
                outcome=outcome,
                pending_s=pending_s,
                progress_s=progress_s,
                start_count=start_count,
                natural_drop=natural_drop,
            )
            self._next_order_id += count
            self._orders.append(batch)
            return batch

    def drop(self, order_id: int, amount: Any) -> dict[str, Any]:
        amount = _as_int(amount, "amount", minimum=1)
        plan = self.plan(order_id)
        if plan is None:
            raise AdminError(msg.ERR_ORDER_NOT_FOUND, 404)
        with self._lock:
            t = self.now()
            state = state_at(plan, t, self.cancel_at(order_id))
            if not state.final or state.status not in (OrderStatus.COMPLETED, OrderStatus.PARTIAL):
                raise AdminError(msg.ERR_NOT_COMPLETED, 409)
            self._activity.drops.setdefault(order_id, []).append((t, amount))
        return self.count(order_id) or {}

    def count(self, order_id: int) -> dict[str, Any] | None:
        plan = self.plan(order_id)
        if plan is None:
            return None
        t = self.now()
        state = state_at(plan, t, self.cancel_at(order_id))
        dropped = self._dropped(plan, state, t)
        return {
            "order": order_id,
            "count": target_count(plan, state, dropped, self._restored(order_id, t)),
            "expected": plan.start_count + plan.quantity,
        }

    def _refill_truth(self, refill: RefillPlan, t: float) -> dict[str, Any]:
        dialect = self.dialect
        status = refill_status_at(refill, t)
        return {
            "refill_id": refill.refill_id,
            "order": refill.order_id,
            "status": str(status),
            "raw_status": dialect.spell_refill(status),
            "requested_at": refill.requested_at,
            "final_at": refill.final_at,
            "final": t >= refill.final_at,
            "restore": refill.restore,
            "timeline": [
                {
                    "at": at,
                    "at_unix": self.clock.to_unix(at),
                    "status": str(entry),
                    "raw_status": dialect.spell_refill(entry),
                }
                for at, entry in refill_timeline(refill, t)
            ],
        }

    def truth(self, order_ids: Iterable[int]) -> dict[str, Any]:
        t = self.now()
        dialect = self.dialect
        currency = self.currency if dialect.currency_in_status else None
        orders: dict[str, Any] = {}
        for order_id in order_ids:
            plan = self.plan(order_id)
            if plan is None:
                orders[str(order_id)] = None
                continue
            cancel = self._activity.cancels.get(order_id)
            cancel_at = cancel[1] if cancel is not None else None
            state = state_at(plan, t, cancel_at)
            dropped = self._dropped(plan, state, t)
            restored = self._restored(order_id, t)
            refills = self._activity.refills_of_order.get(order_id, [])
            batch = self._orders.batch_of(order_id)
            orders[str(order_id)] = {
                "order": order_id,
                "service": plan.service_id,
                "link": batch.link if batch is not None else None,
                "quantity": plan.quantity,
                "status": str(state.status),
                "raw_status": dialect.spell_order(state.status),
                "remains": dialect.reported_remains(state),
                "charge": _money_text(state.charge),
                "start_count": state.start_count,
                "currency": currency,
                "final": state.final,
                "count": target_count(plan, state, dropped, restored),
                "expected_count": plan.start_count + plan.quantity,
                "dropped": dropped,
                "restored": restored,
                "outstanding_drop": dropped - restored,
                "cancel": (
                    {"requested_at": cancel[0], "effective_at": cancel[1]}
                    if cancel is not None
                    else None
                ),
                "plan": {
                    "outcome": str(plan.outcome),
                    "created_at": plan.created_at,
                    "start_at": plan.start_at,
                    "final_at": final_at(plan, cancel_at),
                    "delivered": plan.delivered,
                    "start_count": plan.start_count,
                    "drop_at": plan.drop_at,
                    "drop_amount": plan.drop_amount,
                },
                "refills": [self._refill_truth(refill, t) for refill in refills],
                "timeline": [
                    {
                        "at": at,
                        "at_unix": self.clock.to_unix(at),
                        "status": str(entry.status),
                        "raw_status": dialect.spell_order(entry.status),
                        "remains": dialect.reported_remains(entry),
                        "charge": _money_text(entry.charge),
                        "start_count": entry.start_count,
                    }
                    for at, entry in timeline(plan, t, cancel_at)
                ],
            }
        return {"sim_now": t, "orders": orders}

    def refill_truth(self, refill_ids: Iterable[int]) -> dict[str, Any]:
        t = self.now()
        refills: dict[str, Any] = {}
        for refill_id in refill_ids:
            refill = self._activity.refills.get(refill_id)
            refills[str(refill_id)] = self._refill_truth(refill, t) if refill else None
        return {"sim_now": t, "refills": refills}

    def list_service_again(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """List a service a second time, under another category (real panels do this): the
        copy goes last, with the given category and optionally its own name and rate. The
        sim's own rules then use the last listing, as a client that reads the list would."""
        service_id = _as_int(spec.get("service"), "service", minimum=1)
        category = spec.get("category")
        if not isinstance(category, str) or not category:
            raise AdminError("category must be a non-empty string")
        with self._lock:
            original = self.services.get(service_id)
            if original is None:
                raise AdminError(f"unknown service {service_id}")
            name = spec.get("name", original.name)
            rate = spec.get("rate", original.rate_text)
            if not isinstance(name, str) or not name:
                raise AdminError("name must be a non-empty string")
            try:
                Decimal(str(rate))
            except InvalidOperation:
                raise AdminError("rate must be a decimal amount") from None
            copy = replace(original, category=category, name=name, rate_text=str(rate))
            self.catalog = (*self.catalog, copy)
            self.services = catalog_by_id(self.catalog)
            return {"services": len(self.catalog)}

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        known = {item.name for item in fields(SimConfig)} - {"seed", "currency"}
        unknown = set(changes) - known
        if unknown:
            raise AdminError(f"unknown config keys: {', '.join(sorted(unknown))}")
        with self._lock:
            config = replace(self.config)
            for name, value in changes.items():
                if name == "dialect":
                    try:
                        dialect_named(value)
                    except (ValueError, TypeError) as error:
                        raise AdminError(str(error)) from None
                    config.dialect = value
                elif name == "speed":
                    config.speed = _as_float(value, name, minimum=1e-9)
                elif name in ("latency_ms", "refill_too_early_s", "cancel_delay_s"):
                    setattr(config, name, _as_float(value, name))
                elif name in ("refill_window_s", "refill_pending_s", "refill_progress_s"):
                    setattr(config, name, _as_float(value, name, allow_none=True))
                elif name in ("track_per_id", "natural_drops", "single_id_orders_as_order"):
                    setattr(config, name, _as_bool(value, name))
                elif name == "api_key":
                    if value is not None and (not isinstance(value, str) or not value):
                        raise AdminError("api_key must be a non-empty string or null")
                    config.api_key = value
                elif name == "balance":
                    try:
                        amount = Decimal(str(value)).quantize(MONEY_QUANTUM)
                    except InvalidOperation:
                        raise AdminError("balance must be a decimal amount") from None
                    config.balance = amount
            if config.speed != self.config.speed:
                self.clock.set_speed(config.speed)
            if "balance" in changes:
                self._balance = config.balance
            self.stats.track_per_id = config.track_per_id
            if config.natural_drops != self.config.natural_drops:
                self._plans = {}
            self.config = config
            return config.public_view()

    def advance(self, seconds: Any) -> float:
        return self.clock.advance(_as_float(seconds, "advance_s"))

    def reset(self) -> None:
        """Forget orders, refills, drops, faults and counters; restore the startup config
        and catalog."""
        with self._lock:
            self._orders = _OrderStore()
            self._plans = {}
            self._activity = _Activity()
            self.catalog = self._startup_catalog
            self.services = catalog_by_id(self.catalog)
            self.config = replace(self._startup)
            if self.clock.speed != self.config.speed:
                self.clock.set_speed(self.config.speed)
            self._balance = self.config.balance
            self.stats.track_per_id = self.config.track_per_id
        self.stats.reset()
        self.faults.clear()
        self.faults.reset_counts()
        self.gate.release()

    def stats_snapshot(self) -> dict[str, Any]:
        snapshot = self.stats.snapshot()
        snapshot["faults_fired"] = dict(self.faults.fired)
        snapshot["faults_queued"] = self.faults.snapshot()
        snapshot["held_now"] = self.gate.held
        snapshot["orders"] = self._orders.total
        snapshot["refills"] = len(self._activity.refills)
        snapshot["sim_now"] = self.now()
        return snapshot
