"""How each simulated provider dialect spells its answers.

The five provider docs in the seeds agree on the actions and disagree on details. Each
dialect below is modelled on one of them; the simulator's logic is the same for all, only
the rendering (and which request forms are accepted) changes.

``standard`` (seeds 000 and 002)
    Status has ``charge``, ``start_count``, ``status``, ``remains``, ``currency``, all
    numbers as strings. Services carry ``refill`` and ``cancel`` flags. Single and multi
    ``refill`` (multi answers a list of ``{"order": 1, "refill": 1}``, the refill id an int;
    the single answer is ``{"refill": "1"}``, a string), single and multi ``refill_status``
    (``{"status": ...}`` / a list of ``{"refill": 1, "status": ...}``), multi ``cancel``
    (a list of ``{"order": 2, "cancel": 1}``). Unknown refill: "Refill not found".
``nocurrency`` (seed 001)
    No ``currency`` in status answers; status numbers, balance and refill ids are JSON
    numbers; an over-delivered completed order shows a negative ``remains`` (-2).
    Statuses spelled ``In Progress`` and ``Complete``. Services have no ``cancel`` field
    and the ``cancel`` action is unknown ("Incorrect request"). Unknown refill: "Incorrect
    refill ID" (the seed's wording).
``singles`` (seed 003)
    Services carry ``desc`` and no ``cancel``. Only the single ``refill=``/``order=`` forms:
    ``refill`` with ``orders=`` and ``refill_status`` with ``refills=`` answer
    ``{"error": "Incorrect request"}``. Canceled orders are spelled ``Cancelled``. The
    ``cancel`` action is unknown.
``promobox`` (seed 004)
    ``refill`` takes the order id as ``order`` or as ``orders`` (one id only; several ids
    answer "Incorrect request"); no multi ``refill_status``; the single ``refill_status``
    answers ``{"refill": "Completed"}``. In-progress is spelled ``inprogress`` and a
    canceled order ``Refunded``. Multi ``cancel`` as in ``standard``.

Every dialect answers unknown actions with "Incorrect request", a bad key with "Invalid API
key", more than 100 IDs with "Maximum 100 IDs per request", unknown order IDs with
"Incorrect order ID" (per ID in multi answers, top level in single ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tracker.core.status import OrderStatus, RefillStatus
from tracker.sim.catalog import ServiceSpec
from tracker.sim.model import SimOrderState

ERR_INCORRECT_REQUEST = "Incorrect request"
ERR_INVALID_KEY = "Invalid API key"
ERR_TOO_MANY_IDS = "Maximum 100 IDs per request"
ERR_ORDER_NOT_FOUND = "Incorrect order ID"
ERR_SERVICE_NOT_FOUND = "Incorrect service ID"
ERR_BAD_LINK = "Incorrect link"
ERR_NOT_ENOUGH_FUNDS = "Not enough funds"
ERR_REFILL_DISABLED = "Refill is disabled for this service"
ERR_NOT_COMPLETED = "Order is not completed yet"
ERR_TOO_EARLY = "Too early for refill, try again later"
ERR_REFILL_ACTIVE = "Refill already in progress"
ERR_REFILL_EXPIRED = "Refill period expired"
ERR_CANCEL_DISABLED = "Cancel is disabled for this service"
ERR_CANCEL_FINAL = "Order cannot be canceled in its current status"
ERR_CANCEL_REQUESTED = "Cancel already requested"

MAX_IDS_PER_CALL = 100

_STANDARD_ORDER = {
    OrderStatus.PENDING: "Pending",
    OrderStatus.IN_PROGRESS: "In progress",
    OrderStatus.COMPLETED: "Completed",
    OrderStatus.PARTIAL: "Partial",
    OrderStatus.CANCELED: "Canceled",
}
_STANDARD_REFILL = {
    RefillStatus.PENDING: "Pending",
    RefillStatus.IN_PROGRESS: "In progress",
    RefillStatus.COMPLETED: "Completed",
    RefillStatus.REJECTED: "Rejected",
    RefillStatus.CANCELED: "Canceled",
}


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    order_spelling: Mapping[OrderStatus, str]
    refill_spelling: Mapping[RefillStatus, str]
    currency_in_status: bool = True
    numbers_as_json: bool = False
    negative_remains: bool = False
    service_cancel_field: bool = True
    service_desc_field: bool = False
    multi_refill: bool = True
    multi_refill_status: bool = True
    refill_accepts_orders_as_single: bool = False
    single_refill_status_key: str = "status"
    cancel_supported: bool = True
    refill_not_found: str = "Refill not found"

    def spell_order(self, status: OrderStatus) -> str:
        return self.order_spelling.get(status, str(status))

    def spell_refill(self, status: RefillStatus) -> str:
        return self.refill_spelling.get(status, str(status))

    def reported_remains(self, state: SimOrderState) -> int:
        return state.remains if self.negative_remains else max(0, state.remains)

    def _number(self, value: int) -> int | str:
        return value if self.numbers_as_json else str(value)

    def _money(self, value: Decimal) -> float | str:
        return float(value) if self.numbers_as_json else str(value)

    def _refill_id_single(self, refill_id: int) -> int | str:
        return refill_id if self.numbers_as_json else str(refill_id)

    # -- answers -------------------------------------------------------------------------

    def order_status(self, state: SimOrderState, currency: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "charge": self._money(state.charge),
            "start_count": self._number(state.start_count),
            "status": self.spell_order(state.status),
            "remains": self._number(self.reported_remains(state)),
        }
        if self.currency_in_status:
            body["currency"] = currency
        return body

    def services(self, catalog: Iterable[ServiceSpec]) -> list[dict[str, Any]]:
        rendered: list[dict[str, Any]] = []
        for service in catalog:
            entry: dict[str, Any] = {
                "service": service.service_id,
                "name": service.name,
                "type": service.type,
                "category": service.category,
                "rate": service.rate_text,
                "min": str(service.min),
                "max": str(service.max),
            }
            if self.service_desc_field:
                entry["desc"] = service.desc
            entry["refill"] = service.refill
            if self.service_cancel_field:
                entry["cancel"] = service.cancel
            rendered.append(entry)
        return rendered

    def balance(self, amount: Decimal, currency: str) -> dict[str, Any]:
        return {"balance": self._money(amount), "currency": currency}

    def refill_created(self, refill_id: int) -> dict[str, Any]:
        return {"refill": self._refill_id_single(refill_id)}

    def refill_created_multi(
        self, items: Iterable[tuple[int | str, int | str]]
    ) -> list[dict[str, Any]]:
        """``items``: (order id, refill id or error message) in request order."""
        return [
            {"order": order, "refill": result if isinstance(result, int) else {"error": result}}
            for order, result in items
        ]

    def refill_status(self, status: RefillStatus) -> dict[str, Any]:
        return {self.single_refill_status_key: self.spell_refill(status)}

    def refill_status_multi(
        self, items: Iterable[tuple[int | str, RefillStatus | None]]
    ) -> list[dict[str, Any]]:
        """``items``: (refill id, status or None when the refill is unknown)."""
        return [
            {
                "refill": refill,
                "status": self.spell_refill(status)
                if status is not None
                else {"error": self.refill_not_found},
            }
            for refill, status in items
        ]

    def cancel_multi(self, items: Iterable[tuple[int | str, str | None]]) -> list[dict[str, Any]]:
        """``items``: (order id, error message or None when the cancel was accepted)."""
        return [
            {"order": order, "cancel": 1 if error is None else {"error": error}}
            for order, error in items
        ]


DIALECTS: dict[str, Dialect] = {
    "standard": Dialect("standard", _STANDARD_ORDER, _STANDARD_REFILL),
    "nocurrency": Dialect(
        "nocurrency",
        {
            **_STANDARD_ORDER,
            OrderStatus.IN_PROGRESS: "In Progress",
            OrderStatus.COMPLETED: "Complete",
        },
        {**_STANDARD_REFILL, RefillStatus.IN_PROGRESS: "In Progress"},
        currency_in_status=False,
        numbers_as_json=True,
        negative_remains=True,
        service_cancel_field=False,
        cancel_supported=False,
        refill_not_found="Incorrect refill ID",
    ),
    "singles": Dialect(
        "singles",
        {**_STANDARD_ORDER, OrderStatus.CANCELED: "Cancelled"},
        {**_STANDARD_REFILL, RefillStatus.CANCELED: "Cancelled"},
        service_cancel_field=False,
        service_desc_field=True,
        multi_refill=False,
        multi_refill_status=False,
        cancel_supported=False,
    ),
    "promobox": Dialect(
        "promobox",
        {
            **_STANDARD_ORDER,
            OrderStatus.IN_PROGRESS: "inprogress",
            OrderStatus.CANCELED: "Refunded",
        },
        {**_STANDARD_REFILL, RefillStatus.IN_PROGRESS: "inprogress"},
        multi_refill=False,
        multi_refill_status=False,
        refill_accepts_orders_as_single=True,
        single_refill_status_key="refill",
    ),
}


def dialect_named(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)}") from None
