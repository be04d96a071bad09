"""What a provider said about one order or one refill, as the state machines read it.

The provider builds these from its answers (``tracker.apiv2.types`` re-exports them);
``core`` owns them so that its rules depend on nothing outside ``core``. A per-ID error
stays the provider's (``tracker.apiv2.types.ItemError``): reading its wording is the
provider's job, and ``core`` only asks it whether the ID does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from tracker.core.status import OrderStatus, RefillStatus


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


class PerIdError(Protocol):
    """An error about one ID inside a batch answer (the provider's ``ItemError``)."""

    @property
    def means_not_found(self) -> bool: ...
