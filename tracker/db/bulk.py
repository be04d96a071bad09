"""Bulk statements shared by the order and refill stores: Core, no ORM objects."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    Text,
    TextClause,
    any_,
    bindparam,
    cast,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session


def id_in(session: Session, column: ColumnElement[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``. On PostgreSQL one text parameter, ``'{1,2,3}'``, cast to an
    array: a poll's 1,000 IDs as 1,000 bound parameters cost more worker CPU than the
    rest of its read (SQLAlchemy expands them per execution, and psycopg re-parses a query
    that long on every execution instead of caching it)."""
    if session.get_bind().dialect.name == "postgresql":
        listed = "{" + ",".join(str(row_id) for row_id in ids) + "}"
        return column == any_(cast(bindparam(None, listed, type_=Text), ARRAY(BigInteger)))
    return column.in_(ids)


def update_rows(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], *, claim_id: int | None = None
) -> set[int]:
    """Write every row: each dict holds ``row_id`` plus the columns to set, and every dict
    has the same keys. With ``claim_id``, only rows that claim still holds are written.
    Returns the ids written."""
    if not rows:
        return set()
    columns = [key for key in rows[0] if key != "row_id"]
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        parameters: dict[str, Any] = _json_columns(rows, [_ROW_ID, *columns])
        if claim_id is not None:
            parameters["claim_id"] = claim_id
        written = session.execute(_pg_update(table, tuple(columns), dialect, claimed=claim_id is not None), parameters)
        # all(): one fetch of every ID, not one fetch per row.
        return set(written.scalars().all())
    row_ids = [row["row_id"] for row in rows]
    if claim_id is not None:
        # The claim cannot move between this check and the executemany: SQLite's
        # transaction holds the database lock; on MySQL/MariaDB the check locks the rows.
        held_query = select(table.c.id).where(table.c.id.in_(row_ids), table.c.claim_id == claim_id)
        if dialect.name != "sqlite":
            held_query = held_query.with_for_update()
        held = set(session.execute(held_query).scalars())
        rows = [row for row in rows if row["row_id"] in held]
        if not rows:
            return set()
    # Bind names must differ from column names in an UPDATE's SET clause.
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values({column: bindparam(f"new_{column}") for column in columns})
    )
    parameters_list = [
        {"row_id": row["row_id"], **{f"new_{column}": row[column] for column in columns}}
        for row in rows
    ]
    session.connection().execute(statement, parameters_list)
    return {row["row_id"] for row in rows}


def release_claimed(
    session: Session,
    table: Table,
    claim_id: int,
    row_ids: Sequence[int],
    *,
    due_at: datetime,
    due_column: str = "next_poll_at",
) -> int:
    """Give claimed rows back, due again at ``due_at``; the data is untouched."""
    result = session.connection().execute(
        update(table)
        .where(id_in(session, table.c.id, row_ids), table.c.claim_id == claim_id)
        .values({due_column: due_at, "claim_id": None})
    )
    return int(result.rowcount)


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row INSERT; nothing when there are no rows. Every dict has the same keys."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        columns = tuple(rows[0])
        session.execute(_pg_insert(table, columns, dialect), _json_columns(rows, columns))
        return
    session.connection().execute(insert(table), list(rows))


# PostgreSQL: the batch travels as one JSON array per column, unpacked side by side by
# json_array_elements_text. Building a JSON document is C code (the json module);
# binding thousands of separate parameters, or arrays of them, costs Python time per
# value, which is where a batch's time went (see docs/performance.md). One array per
# column, not one object per row: the column names are not encoded again for every row,
# which took most of the encoding time.


def _json_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, str]:
    return {
        f"c{index}": json.dumps([row[name] for row in rows], default=_json_value, separators=(",", ":"))
        for index, name in enumerate(columns)
    }


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return _naive_utc_text(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} in a bulk statement")


@functools.lru_cache(maxsize=4096)
def _naive_utc_text(moment: datetime) -> str:
    """Cached: a batch's rows share a few moments (observed at, now, next poll)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    # The columns are naive UTC (see tracker.db.types.UTCDateTime).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()


_ROW_ID = "row_id"


def _recordset(table: Table, columns: Sequence[str], dialect: Dialect) -> str:
    """The rows as a subquery ``v`` with typed columns. Each column is cast to its type
    without a length or scale: the write into the table's column then checks the length
    (too long fails, as before, where an explicit cast to VARCHAR(n) would cut it) and
    rounds to the scale."""
    arrays = ", ".join(f"json_array_elements_text(CAST(:c{index} AS json))" for index in range(len(columns)))
    typed = ", ".join(f"CAST(c.{name} AS {_base_type(table, name, dialect)}) AS {name}" for name in columns)
    return f"(SELECT {typed} FROM ROWS FROM ({arrays}) AS c({', '.join(columns)})) AS v"


def _base_type(table: Table, name: str, dialect: Dialect) -> str:
    if name == _ROW_ID:
        return "BIGINT"
    return re.sub(r"\(.*\)", "", str(table.c[name].type.compile(dialect=dialect))).strip()


# Bounded: the key holds the engine's dialect, and tests create many engines.
@functools.lru_cache(maxsize=64)
def _pg_update(table: Table, columns: tuple[str, ...], dialect: Dialect, *, claimed: bool) -> TextClause:
    assignments = ", ".join(f"{name} = v.{name}" for name in columns)
    claim_condition = " AND t.claim_id = :claim_id" if claimed else ""
    return text(
        f"UPDATE {table.name} AS t SET {assignments} "
        f"FROM {_recordset(table, (_ROW_ID, *columns), dialect)} "
        f"WHERE t.id = v.{_ROW_ID}{claim_condition} RETURNING t.id"
    )


@functools.lru_cache(maxsize=64)
def _pg_insert(table: Table, columns: tuple[str, ...], dialect: Dialect) -> TextClause:
    names = ", ".join(columns)
    return text(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {_recordset(table, columns, dialect)}")
