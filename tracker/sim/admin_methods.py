"""The admin methods whose arguments ``SimServer`` (in process) and ``SimAdmin`` (over the
admin HTTP API) share: each front builds the same admin JSON body and hands it on its own
way, so the two keep the same signatures and defaults by construction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any


class SimAdminMethods(ABC):
    @property
    @abstractmethod
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the sim."""

    @property
    def url(self) -> str:
        return f"{self.base_url}/api/v2"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/admin"

    @abstractmethod
    def _seed(self, body: dict[str, Any]) -> tuple[int, int]:
        """Seeds what ``POST /admin/orders`` body asks for; the first and last new ids."""

    @abstractmethod
    def _add_fault(self, body: dict[str, Any]) -> None:
        """Queues the rule of a ``POST /admin/faults`` body; a ``ValueError`` if it is bad."""

    def seed_orders(
        self,
        count: int = 1,
        service: int = 1,
        quantity: int | None = None,
        outcome: str | None = None,
        pending_s: float | None = None,
        progress_s: float | None = None,
        link: str = "https://example.com/sim-target",
        age_s: float = 0.0,
        start_count: int | None = None,
        natural_drop: bool | None = None,
    ) -> list[int]:
        first, last = self._seed(
            {
                "count": count,
                "service": service,
                "quantity": quantity,
                "outcome": outcome,
                "pending_s": pending_s,
                "progress_s": progress_s,
                "link": link,
                "age_s": age_s,
                "start_count": start_count,
                "natural_drop": natural_drop,
            }
        )
        # Seeded ids are consecutive: the range is enough, however many there are.
        return list(range(first, last + 1))

    def inject_fault(
        self,
        kind: str,
        count: int | None = None,
        probability: float | None = None,
        actions: Sequence[str] | None = None,
        seconds: float | None = None,
        skip: int = 0,
    ) -> None:
        self._add_fault(
            {
                "kind": kind,
                "count": count,
                "probability": probability,
                "actions": list(actions) if actions is not None else None,
                "seconds": seconds,
                "skip": skip,
            }
        )
