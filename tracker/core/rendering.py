"""How times and amounts appear in JSON: the CLI's ``--json``, stats and event payloads."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as shops' JSON parsers expect."""
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def money(amount: Decimal | None) -> str | None:
    """An amount as a string, never a float: prices have more places than a float keeps."""
    return str(amount) if amount is not None else None
