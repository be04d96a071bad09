"""The simulated provider's order model: pure functions of a plan and the sim clock.

Nothing here does I/O, keeps state or reads a clock. Every order gets a *plan* drawn
deterministically from ``(seed, order id)`` (plus the overrides its batch carries), and
everything observable about it at sim time ``t`` is a pure function of that plan, of a
cancel request (if any), and of drops and refills (for the target's count). That is why
the simulator can hold a million orders without a background thread advancing them.

Plan (defaults; a batch can override outcome, durations, quantity and start count):

- ``Pending`` for ``pending_s`` (10-60 sim s), then ``In progress`` for ``progress_s``
  (90-540 sim s) in 3-5 discrete remains steps, then final: an order is final 2-10 sim
  minutes after it was created.
- Outcome: ``Completed`` (80 %), ``Partial`` (12 %, delivered 30-90 % of the quantity,
  charged for the delivered part only), ``Canceled`` (8 %, stays ``Pending`` until its
  final time, then full refund: charge 0, remains = quantity).
- While Pending the status shows ``start_count`` 0; from In progress on, the real one.
- The charge is ``rate * quantity / 1000`` with 5 decimal places until the order is final.
- 15 % of Completed orders over-deliver by 1-5 (canonical remains goes negative; only
  dialects that allow it show that).
- Natural drops: for services with refill, 20 % of orders that delivered something lose
  2-10 % of the delivered count 1-10 sim minutes after they became final. A batch can turn
  this off (``natural_drop=False``) or force it (``True``).

A cancel request takes effect ``cancel_delay_s`` after it was accepted, unless the order
became final first; then the order is ``Partial`` (remains = undelivered part, charged for
the delivered part) when something was delivered, else ``Canceled`` with charge 0.

Refills: ``Pending`` for 5-30 sim s, then ``Rejected`` when nothing was missing at request
time, else ``In progress`` for 20-120 sim s, then ``Completed``, restoring the count that
was missing when the refill was requested.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

from tracker.core.status import OrderStatus, RefillStatus
from tracker.sim.catalog import ServiceSpec

MONEY_QUANTUM = Decimal("0.00001")
ZERO_MONEY = Decimal("0.00000")

_MASK64 = (1 << 64) - 1
_ORDER_SALT = 0x5D1C_0A7E_0D3E_5EED
_REFILL_SALT = 0x3EF1_1100_0000_A11D


class Outcome(StrEnum):
    COMPLETED = "Completed"
    PARTIAL = "Partial"
    CANCELED = "Canceled"


def charge_for(rate: Decimal, quantity: int) -> Decimal:
    """Price of ``quantity`` units at ``rate`` per 1000, to 5 decimal places."""
    return (rate * quantity / 1000).quantize(MONEY_QUANTUM)


def _mix(value: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _fraction16(bits: int) -> float:
    """The low 16 bits as a fraction in [0, 1)."""
    return (bits & 0xFFFF) / 65536.0


@dataclass(frozen=True, slots=True)
class OrderBatch:
    """Orders ``first_id .. first_id + count - 1`` created together with shared overrides.

    ``None`` in an override means "draw it from the plan". One ``add`` is a batch of one;
    a bulk seed of a million orders is one batch, which keeps storage tiny.
    """

    first_id: int
    count: int
    created_at: float
    service_id: int
    quantity: int | None
    link: str
    outcome: Outcome | None = None
    pending_s: float | None = None
    progress_s: float | None = None
    start_count: int | None = None
    natural_drop: bool | None = None

    @property
    def last_id(self) -> int:
        return self.first_id + self.count - 1

    def holds(self, order_id: int) -> bool:
        return self.first_id <= order_id < self.first_id + self.count


class Plan(NamedTuple):
    """An order's whole life, drawn once. A NamedTuple: cheap to build by the million."""

    order_id: int
    service_id: int
    quantity: int
    rate: Decimal
    created_at: float
    start_at: float
    final_at: float
    outcome: Outcome
    # Delivered when final; above ``quantity`` for an over-delivered order.
    delivered: int
    # Times at which In progress remains step down (len = steps - 1).
    step_times: tuple[float, ...]
    start_count: int
    full_charge: Decimal
    final_charge: Decimal
    drop_at: float | None
    drop_amount: int


class SimOrderState(NamedTuple):
    status: OrderStatus
    # Canonical remains: negative when over-delivered.
    remains: int
    charge: Decimal
    # As the status answer reports it: 0 until the order started.
    start_count: int
    delivered: int
    final: bool

    def observable(self) -> tuple[OrderStatus, int, Decimal, int]:
        return (self.status, self.remains, self.charge, self.start_count)


@lru_cache(maxsize=64)
def _seed_key(seed: int) -> int:
    return _mix(seed ^ _ORDER_SALT)


@lru_cache(maxsize=1 << 16)
def _cached_charge(rate: Decimal, quantity: int) -> Decimal:
    return charge_for(rate, quantity)


_UNIT16 = 1.0 / 65536.0


def make_plan(
    seed: int, order_id: int, batch: OrderBatch, service: ServiceSpec, natural_drops: bool
) -> Plan:
    # Hot path (every status answer recomputes plans): bit fields of two 64-bit hashes,
    # a third only when needed, positional construction.
    base = _mix(_seed_key(seed) ^ order_id)
    h2 = _mix(base)
    h3 = 0
    quantity = batch.quantity
    if quantity is None:
        h3 = _mix(h2)
        high = min(service.max, service.min * 20)
        quantity = service.min + h3 % (high - service.min + 1)

    outcome = batch.outcome
    if outcome is None:
        roll = (base & 0xFFFF) * _UNIT16
        outcome = (
            Outcome.COMPLETED
            if roll < 0.80
            else Outcome.PARTIAL
            if roll < 0.92
            else Outcome.CANCELED
        )
    start_count = batch.start_count
    if start_count is None:
        start_count = (base >> 16) % 20000
    pending_s = batch.pending_s
    if pending_s is None:
        pending_s = 10.0 + 50.0 * ((base >> 32) & 0xFFFF) * _UNIT16
    progress_s = batch.progress_s
    if progress_s is None:
        progress_s = 90.0 + 450.0 * ((base >> 48) & 0xFFFF) * _UNIT16
    steps = 3 + (h2 >> 16) % 3

    rate = service.rate
    full_charge = _cached_charge(rate, quantity)
    if outcome is Outcome.COMPLETED:
        over = 1 + (h2 >> 28) % 5 if ((h2 >> 32) & 0xFFFF) * _UNIT16 < 0.15 else 0
        delivered = quantity + over
        final_charge = full_charge
    elif outcome is Outcome.PARTIAL:
        delivered = int(quantity * (0.3 + 0.6 * (h2 & 0xFFFF) * _UNIT16))
        delivered = min(max(delivered, 1), quantity - 1)
        final_charge = _cached_charge(rate, delivered) if delivered > 0 else ZERO_MONEY
    else:
        delivered = 0
        final_charge = ZERO_MONEY

    created_at = batch.created_at
    start_at = created_at + pending_s
    final_at = start_at + progress_s
    step_times = tuple([start_at + progress_s * j / steps for j in range(1, steps)])

    drop_at: float | None = None
    drop_amount = 0
    forced = batch.natural_drop
    drops = forced if forced is not None else natural_drops
    if (
        drops
        and service.refill
        and delivered > 0
        and (forced or ((h2 >> 48) & 0xFFFF) * _UNIT16 < 0.20)
    ):
        if not h3:
            h3 = _mix(h2)
        drop_at = final_at + 60.0 + 540.0 * ((h3 >> 16) & 0xFFFF) * _UNIT16
        drop_amount = max(1, int(delivered * (0.02 + 0.08 * ((h3 >> 32) & 0xFFFF) * _UNIT16)))

    return Plan(
        order_id,
        service.service_id,
        quantity,
        rate,
        created_at,
        start_at,
        final_at,
        outcome,
        delivered,
        step_times,
        start_count,
        full_charge,
        final_charge,
        drop_at,
        drop_amount,
    )


_FINAL_STATUS = {
    Outcome.COMPLETED: OrderStatus.COMPLETED,
    Outcome.PARTIAL: OrderStatus.PARTIAL,
    Outcome.CANCELED: OrderStatus.CANCELED,
}


def _natural_state(plan: Plan, t: float) -> SimOrderState:
    quantity = plan.quantity
    if t >= plan.final_at:
        started = plan.outcome is not Outcome.CANCELED
        return SimOrderState(
            _FINAL_STATUS[plan.outcome],
            quantity - plan.delivered,
            plan.final_charge,
            plan.start_count if started else 0,
            plan.delivered,
            True,
        )
    if t < plan.start_at or plan.outcome is Outcome.CANCELED:
        return SimOrderState(OrderStatus.PENDING, quantity, plan.full_charge, 0, 0, False)
    step = bisect_right(plan.step_times, t)
    steps = len(plan.step_times) + 1
    delivered = min(plan.delivered, quantity) * step // steps
    return SimOrderState(
        OrderStatus.IN_PROGRESS,
        quantity - delivered,
        plan.full_charge,
        plan.start_count,
        delivered,
        False,
    )


def cancel_takes_effect(plan: Plan, cancel_at: float | None) -> bool:
    return cancel_at is not None and cancel_at < plan.final_at


def state_at(plan: Plan, t: float, cancel_at: float | None = None) -> SimOrderState:
    """What the provider reports about the order at sim time ``t``.

    ``cancel_at`` is when an accepted cancel request takes effect (``None``: no cancel).
    """
    if cancel_at is not None and cancel_at < plan.final_at and t >= cancel_at:
        before = _natural_state(plan, cancel_at)
        started = before.status is not OrderStatus.PENDING
        if before.delivered > 0:
            return SimOrderState(
                OrderStatus.PARTIAL,
                plan.quantity - before.delivered,
                charge_for(plan.rate, before.delivered),
                plan.start_count,
                before.delivered,
                True,
            )
        return SimOrderState(
            OrderStatus.CANCELED,
            plan.quantity,
            ZERO_MONEY,
            plan.start_count if started else 0,
            0,
            True,
        )
    return _natural_state(plan, t)


def final_at(plan: Plan, cancel_at: float | None = None) -> float:
    if cancel_at is not None and cancel_at < plan.final_at:
        return cancel_at
    return plan.final_at


def timeline(
    plan: Plan, t: float, cancel_at: float | None = None
) -> list[tuple[float, SimOrderState]]:
    """Every observable state the order has been in up to ``t``, oldest first.

    A new entry starts whenever status, remains, charge or start count changes.
    """
    candidates = [plan.created_at, plan.start_at, *plan.step_times, plan.final_at]
    end = final_at(plan, cancel_at)
    if end != plan.final_at:
        candidates = [at for at in candidates if at < end] + [end]
    entries: list[tuple[float, SimOrderState]] = []
    for at in sorted(candidates):
        if at > t:
            break
        state = state_at(plan, at, cancel_at)
        if not entries or entries[-1][1].observable() != state.observable():
            entries.append((at, state))
    return entries


def natural_dropped(plan: Plan, state: SimOrderState, t: float) -> int:
    if plan.drop_at is None or t < plan.drop_at or not state.final:
        return 0
    return min(plan.drop_amount, state.delivered)


def target_count(plan: Plan, state: SimOrderState, dropped: int, restored: int) -> int:
    """The target's current count as a count probe would read it."""
    return max(0, plan.start_count + state.delivered - dropped + restored)


@dataclass(frozen=True, slots=True)
class RefillPlan:
    refill_id: int
    order_id: int
    requested_at: float
    # What the refill puts back; 0 means nothing was missing and it ends Rejected.
    restore: int
    pending_s: float
    progress_s: float

    @property
    def final_at(self) -> float:
        if self.restore <= 0:
            return self.requested_at + self.pending_s
        return self.requested_at + self.pending_s + self.progress_s


def make_refill(
    seed: int,
    refill_id: int,
    order_id: int,
    requested_at: float,
    restore: int,
    pending_s: float | None = None,
    progress_s: float | None = None,
) -> RefillPlan:
    draw = _mix(_mix(seed ^ _REFILL_SALT) ^ refill_id)
    return RefillPlan(
        refill_id=refill_id,
        order_id=order_id,
        requested_at=requested_at,
        restore=max(0, restore),
        pending_s=pending_s if pending_s is not None else 5.0 + 25.0 * _fraction16(draw),
        progress_s=progress_s if progress_s is not None else 20.0 + 100.0 * _fraction16(draw >> 16),
    )


def refill_status_at(refill: RefillPlan, t: float) -> RefillStatus:
    if t < refill.requested_at + refill.pending_s:
        return RefillStatus.PENDING
    if refill.restore <= 0:
        return RefillStatus.REJECTED
    if t < refill.final_at:
        return RefillStatus.IN_PROGRESS
    return RefillStatus.COMPLETED


def refill_restored_at(refill: RefillPlan, t: float) -> int:
    return refill.restore if refill.restore > 0 and t >= refill.final_at else 0


def refill_timeline(refill: RefillPlan, t: float) -> list[tuple[float, RefillStatus]]:
    candidates = [refill.requested_at, refill.requested_at + refill.pending_s, refill.final_at]
    entries: list[tuple[float, RefillStatus]] = []
    for at in candidates:
        if at > t:
            break
        status = refill_status_at(refill, at)
        if not entries or entries[-1][1] is not status:
            entries.append((at, status))
    return entries


def outstanding_drop(dropped: int, refills: Sequence[RefillPlan], t: float) -> int:
    """How much of the dropped count no completed refill has put back yet."""
    return dropped - sum(refill_restored_at(refill, t) for refill in refills)
