"""How much of a money amount the tracker keeps (pure: shared by parsing and the database).

Money columns are ``NUMERIC(MONEY_PRECISION, MONEY_SCALE)``. A provider may send more
places (``0.000410922``); the database would round them away, and the next identical
answer would then compare as a change. So amounts are rounded once, when an answer is
parsed, exactly as PostgreSQL and MySQL round NUMERIC: half away from zero.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MONEY_PRECISION = 24
MONEY_SCALE = 8
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
# The first amount too large for the column: 10 ** (24 - 8).
MONEY_LIMIT = Decimal(10) ** (MONEY_PRECISION - MONEY_SCALE)


def to_stored_scale(amount: Decimal) -> Decimal:
    """``amount`` rounded to ``MONEY_SCALE`` places; unchanged when it has no more places,
    so a provider's own digits ("0.90") are kept as given."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MONEY_SCALE:
        return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)
    return amount
