"""Typed results of API v2 calls.

Order IDs are positive integers everywhere in the tracker. Refill IDs are opaque
strings: providers send them as ``1`` or ``"1"`` and nothing promises they stay numeric.
Money is always ``Decimal``; counts are ``int``; a field the provider left out is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# The reports are core's: its state machines read them. Re-exported here, where the
# rest of a call's results live.
from tracker.core.reports import OrderReport as OrderReport
from tracker.core.reports import RefillReport as RefillReport
from tracker.apiv2.messages import means_not_found


@dataclass(frozen=True, slots=True)
class ItemError:
    """An error about one ID inside a batch answer, e.g. ``{"error": "Incorrect order ID"}``.

    It is a value, not an exception: the other IDs of the batch are still good.
    """

    message: str

    @property
    def means_not_found(self) -> bool:
        return means_not_found(self.message)


@dataclass(frozen=True, slots=True)
class CatalogService:
    """One entry of a provider's `services` catalog (the database keeps it as `db.models.Service`)."""

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
