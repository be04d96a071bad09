"""The order state machine: what one provider answer does to one tracked order.

Pure: no database, no clock, no I/O. ``apply_observation`` takes the order's current state
and one observation and returns the new state plus the transition to record, if any.

Rules, each a promise the rest of the tracker builds on:

- An answer requested before the one the state already reflects is stale and ignored, so
  shuffled or late answers can never move an order backwards.
- The same answer applied twice records nothing the second time.
- A transition is recorded when status, remains, charge or start count changes. A field
  the provider left out keeps its previous value instead of becoming "unknown".
- A per-ID "Incorrect order ID" increments a counter; only ``not_found_after`` of them in a
  row end the order as ``Not found``. Any real answer resets the counter.
- Final statuses (Completed, Partial, Canceled, Not found) stop polling, but a newer
  answer that says otherwise is still recorded, once: the provider's word wins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from tracker.core.reports import OrderReport, PerIdError
from tracker.core.status import FINAL_ORDER_STATUSES, OrderStatus


@dataclass(frozen=True, slots=True)
class OrderState:
    status: OrderStatus | None = None
    raw_status: str | None = None
    remains: int | None = None
    charge: Decimal | None = None
    start_count: int | None = None
    currency: str | None = None
    last_observed_at: datetime | None = None
    consecutive_not_found: int = 0
    unchanged_polls: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of ``order_events``."""

    from_status: OrderStatus | None
    to_status: OrderStatus
    raw_status: str | None
    remains: int | None
    charge: Decimal | None
    start_count: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    state: OrderState
    transition: Transition | None
    # True when the answer was older than the state and changed nothing.
    stale: bool = False


def apply_observation(
    state: OrderState,
    result: OrderReport | PerIdError | None,
    observed_at: datetime,
    *,
    not_found_after: int,
) -> Outcome:
    """Apply one provider answer about one order, requested at ``observed_at``.

    ``result`` is None when the provider's batch answer simply left the order out.
    """
    if state.last_observed_at is not None and observed_at < state.last_observed_at:
        return Outcome(state, None, stale=True)
    if isinstance(result, OrderReport):
        return _apply_report(state, result, observed_at)
    if result is not None and result.means_not_found:
        return _apply_not_found(state, observed_at, not_found_after)
    # Another per-ID error, or no entry at all: we learned nothing about this order.
    return Outcome(
        replace(state, last_observed_at=observed_at, unchanged_polls=state.unchanged_polls + 1),
        None,
    )


def _apply_report(state: OrderState, report: OrderReport, observed_at: datetime) -> Outcome:
    remains = report.remains if report.remains is not None else state.remains
    charge = report.charge if report.charge is not None else state.charge
    start_count = report.start_count if report.start_count is not None else state.start_count
    changed = (
        report.status != state.status
        or remains != state.remains
        or charge != state.charge
        or start_count != state.start_count
    )
    new_state = OrderState(
        status=report.status,
        raw_status=report.raw_status,
        remains=remains,
        charge=charge,
        start_count=start_count,
        currency=report.currency if report.currency is not None else state.currency,
        last_observed_at=observed_at,
        consecutive_not_found=0,
        unchanged_polls=0 if changed else state.unchanged_polls + 1,
    )
    if not changed:
        return Outcome(new_state, None)
    transition = Transition(
        from_status=state.status,
        to_status=report.status,
        raw_status=report.raw_status,
        remains=remains,
        charge=charge,
        start_count=start_count,
    )
    return Outcome(new_state, transition)


def _apply_not_found(state: OrderState, observed_at: datetime, not_found_after: int) -> Outcome:
    misses = state.consecutive_not_found + 1
    if misses < not_found_after or state.status == OrderStatus.NOT_FOUND:
        return Outcome(
            replace(
                state,
                last_observed_at=observed_at,
                consecutive_not_found=misses,
                unchanged_polls=state.unchanged_polls + 1,
            ),
            None,
        )
    new_state = replace(
        state,
        status=OrderStatus.NOT_FOUND,
        last_observed_at=observed_at,
        consecutive_not_found=misses,
        unchanged_polls=0,
    )
    transition = Transition(
        from_status=state.status,
        to_status=OrderStatus.NOT_FOUND,
        raw_status=state.raw_status,
        remains=state.remains,
        charge=state.charge,
        start_count=state.start_count,
    )
    return Outcome(new_state, transition)
