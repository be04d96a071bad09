"""Column types that behave the same on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DOUBLE, BigInteger, DateTime, Dialect, Float, Integer, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

from tracker.core.money import MONEY_PRECISION, MONEY_SCALE

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

# MySQL's plain FLOAT is single precision: 0.1 would read back as 0.100000001. The
# generic DOUBLE, which MySQL's dialect renders as its own: importing MySQL's dialect on
# SQLite or PostgreSQL would cost every process 1 MB.
Real = Float().with_variant(DOUBLE(asdecimal=False), "mysql", "mariadb")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database.

    SQLite has no time zones and compares datetimes as text, so every stored value must be
    UTC in one format; this type guarantees it on every database. MySQL's DATETIME drops
    the microseconds unless told to keep them (fsp 6), and answer times are compared to them.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Money(TypeDecorator[Decimal]):
    """Exact decimals. SQLite would store NUMERIC as a float, so there it is text.

    The scale is ``tracker.core.money``'s, which the parser rounds answers to.
    """

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return str(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        # PostgreSQL pads NUMERIC(24, 8) with zeros; normalise so "0.27819" stays "0.27819".
        amount = Decimal(str(value))
        return amount.quantize(Decimal(1)) if amount == amount.to_integral() else amount.normalize()
