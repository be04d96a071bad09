"""The simulated provider's services catalog.

The catalog covers every combination of the refill and cancel flags, so a test can pick a
service by the rule it exercises rather than by name. Rates are kept as the provider's
text ("0.90") and as a ``Decimal``; charges are computed from the ``Decimal``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    service_id: int
    name: str
    type: str
    category: str
    rate_text: str
    min: int
    max: int
    refill: bool
    cancel: bool
    desc: str
    rate: Decimal = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", Decimal(self.rate_text))

    @property
    def takes_comments(self) -> bool:
        return self.type == "Custom Comments"


# Service ids are fixed: tests and the demo refer to them.
SERVICE_FOLLOWERS_REFILL_CANCEL = 1
SERVICE_COMMENTS_CANCEL = 2
SERVICE_LIKES_PLAIN = 3
SERVICE_VIEWS_REFILL = 4
SERVICE_MEMBERS_REFILL_CANCEL = 5

DEFAULT_CATALOG: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        SERVICE_FOLLOWERS_REFILL_CANCEL,
        "Instagram Followers [Refill 30D]",
        "Default",
        "Instagram",
        "0.90",
        50,
        10000,
        refill=True,
        cancel=True,
        desc="Real-looking followers, 30 days refill guarantee.",
    ),
    ServiceSpec(
        SERVICE_COMMENTS_CANCEL,
        "Instagram Comments [Custom]",
        "Custom Comments",
        "Instagram",
        "8",
        10,
        1500,
        refill=False,
        cancel=True,
        desc="Your own comments, one per line.",
    ),
    ServiceSpec(
        SERVICE_LIKES_PLAIN,
        "Instagram Likes",
        "Default",
        "Instagram",
        "0.25",
        10,
        50000,
        refill=False,
        cancel=False,
        desc="Fast likes, no refill.",
    ),
    ServiceSpec(
        SERVICE_VIEWS_REFILL,
        "YouTube Views [Refill 30D]",
        "Default",
        "YouTube",
        "2.5",
        200,
        100000,
        refill=True,
        cancel=False,
        desc="Retention views, 30 days refill guarantee.",
    ),
    ServiceSpec(
        SERVICE_MEMBERS_REFILL_CANCEL,
        "Telegram Members [Refill 60D]",
        "Default",
        "Telegram",
        "1.2",
        100,
        20000,
        refill=True,
        cancel=True,
        desc="Channel members, 60 days refill guarantee.",
    ),
)


def catalog_by_id(catalog: tuple[ServiceSpec, ...] = DEFAULT_CATALOG) -> dict[int, ServiceSpec]:
    return {service.service_id: service for service in catalog}
