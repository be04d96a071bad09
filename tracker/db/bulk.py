"""Bulk statements shared by the order and refill stores: Core, no ORM objects."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, bindparam, false, insert, select, update
from sqlalchemy.orm import Session


def update_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany UPDATE. Each dict holds ``row_id`` plus the columns to set, and every
    dict must have the same keys."""
    if not rows:
        return
    columns = [key for key in rows[0] if key != "row_id"]
    # Bind names must differ from column names in an UPDATE's SET clause.
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values({column: bindparam(f"new_{column}") for column in columns})
    )
    parameters = [
        {
            "row_id": row["row_id"],
            **{f"new_{column}": row[column] for column in columns},
        }
        for row in rows
    ]
    session.connection().execute(statement, parameters)


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
        .where(table.c.id.in_(row_ids), table.c.claim_id == claim_id)
        .values({due_column: due_at, "claim_id": None})
    )
    return int(result.rowcount)


def claimed_external_ids(
    session: Session, table: Table, claim_id: int, row_ids: Sequence[int]
) -> dict[int, Any]:
    """Row id -> provider ID, for rows still held by ``claim_id`` and not final."""
    rows = session.execute(
        select(table.c.id, table.c.external_id).where(
            table.c.id.in_(row_ids),
            table.c.claim_id == claim_id,
            table.c.final == false(),
        )
    ).all()
    return {row.id: row.external_id for row in rows}


def lock_claimed_rows(
    session: Session,
    table: Table,
    claim_id: int,
    row_ids: Sequence[int],
    columns: Sequence[str],
) -> Sequence[Row[Any]]:
    """``columns`` of the rows still held by ``claim_id``, by id, locked for this
    transaction on PostgreSQL (SQLite's write transaction already holds the database)."""
    query = (
        select(*(table.c[name] for name in columns))
        .where(table.c.id.in_(row_ids), table.c.claim_id == claim_id)
        .order_by(table.c.id)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.execute(query).all()


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row INSERT (executemany); nothing when there are no rows."""
    if rows:
        session.connection().execute(insert(table), list(rows))
