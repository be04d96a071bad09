"""Typed results of API v2 calls.

Order IDs are positive integers everywhere in the tracker. Refill IDs are opaque
strings: providers send them as ``1`` or ``"1"`` and nothing promises they stay numeric.
Money is always ``Decimal``; counts are ``int``; a field the provider left out is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tracker.domain.status import OrderStatus, RefillStatus


@dataclass(frozen=True, slots=True)
class ItemError:
    """An error about one ID inside a batch answer, e.g. ``{"error": "Incorrect order ID"}``.

    It is a value, not an exception: the other IDs of the batch are still good.
    """

    message: str

    @property
    def means_not_found(self) -> bool:
        from tracker.domain.provider_messages import means_not_found

        return means_not_found(self.message)


@dataclass(frozen=True, slots=True)
class OrderReport:
    """One order's status as a provider reported it."""

    status: OrderStatus
    raw_status: str
    charge: Decimal | None
    start_count: int | None
    remains: int | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class RefillReport:
    """One refill's status as a provider reported it."""

    status: RefillStatus
    raw_status: str


@dataclass(frozen=True, slots=True)
class Service:
    service_id: int
    name: str
    type: str | None
    category: str | None
    rate: Decimal | None
    min: int | None
    max: int | None
    refill: bool
    # None when the provider's catalog has no "cancel" field at all (some dialects omit it).
    cancel: bool | None
    description: str | None


@dataclass(frozen=True, slots=True)
class Balance:
    amount: Decimal
    currency: str | None


@dataclass(frozen=True, slots=True)
class CancelAccepted:
    """The provider accepted a cancel request for one order."""

    raw: str


OrderResult = OrderReport | ItemError
RefillResult = RefillReport | ItemError
# Result of ``refill`` for one order: the new refill ID, or why it was refused.
RefillCreation = str | ItemError
CancelResult = CancelAccepted | ItemError
