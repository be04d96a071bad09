"""Claiming due rows for polling: the database decides what is due, and leases it.

A claim moves each row's ``next_poll_at`` to the end of the lease and stamps it with a
random ``claim_id``. The poll task carries ``(claim_id, row ids)``; when it runs it only
touches rows still stamped with its claim. So:

- two dispatchers (two beats, or two ticks) never hand out the same row twice: on
  PostgreSQL and MySQL/MariaDB the claim selects ``FOR UPDATE SKIP LOCKED``; on SQLite
  every write transaction holds the database lock (``BEGIN IMMEDIATE``), which
  serialises claims;
- if the broker loses the task (Redis restarted or flushed, worker killed), the lease
  runs out, the rows are due again, and the next tick claims them afresh;
- a task delivered late, after its rows were re-claimed, finds nothing to do.

Batches are filled from rows due within ``fill_horizon`` when at least one row is due
now. Polling a few orders a little early keeps every call close to the 100-ID maximum,
and orders polled together stay in step, so a sweep costs ceil(active / 100) calls.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Protocol, cast

from sqlalchemy import Column, FromClause, Select, Table, false, func, or_, select, update
from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class Claim:
    claim_id: int
    row_ids: list[int]


class _Pollable(Protocol):
    __table__: ClassVar[FromClause]


def new_claim_id() -> int:
    return secrets.randbits(62)


def claim_due(
    session: Session,
    model: type[_Pollable],
    *,
    provider_id: int | None,
    now: datetime,
    lease_until: datetime,
    batch_size: int,
    max_batches: int,
    fill_horizon: timedelta = timedelta(0),
    due_column: str = "next_poll_at",
) -> list[Claim]:
    """Claim up to ``max_batches`` batches of due rows of one provider.

    ``due_column`` names the row's due time and lease (``next_poll_at`` for polls,
    ``next_attempt_at`` for refill requests); a NULL there is never due. ``provider_id``
    None claims across providers (the outbox, whose rows go to the shop, not a provider).
    """
    table = cast(Table, model.__table__)
    id_col: Column[int] = table.c.id
    due: Column[datetime] = table.c[due_column]
    dialect = session.get_bind().dialect.name
    claims: list[Claim] = []
    conditions = [
        table.c.final == false(),
        due <= now + fill_horizon,
        # A claimed row's due time is its lease's end: it is claimable again only once that
        # has passed, never as filler (a fill horizon can reach past a lease).
        or_(table.c.claim_id.is_(None), due <= now),
    ]
    if provider_id is not None:
        conditions.append(table.c.provider_id == provider_id)
    for _ in range(max_batches):
        candidates = select(id_col, due).where(*conditions).order_by(due).limit(batch_size)
        claim_id = new_claim_id()
        values = {due_column: lease_until, "claim_id": claim_id}
        if dialect == "postgresql":
            row_ids = _claim_in_one_statement(session, table, candidates, due_column, values, now=now)
        else:
            if dialect != "sqlite":
                # MySQL/MariaDB: no UPDATE ... RETURNING, so lock, then stamp what was locked.
                candidates = candidates.with_for_update(skip_locked=True)
            row_ids = _claim_in_two_statements(session, table, candidates, values, now=now)
        if not row_ids:
            break
        claims.append(Claim(claim_id, row_ids))
        if len(row_ids) < batch_size:
            break
    return claims


def _claim_in_one_statement(
    session: Session,
    table: Table,
    candidates: Select[int, datetime],
    due_column: str,
    values: dict[str, object],
    *,
    now: datetime,
) -> list[int]:
    """PostgreSQL: lock the candidates (skipping rows another dispatcher holds) and stamp
    them in one round trip, only when the earliest of them is due now."""
    locked = candidates.with_for_update(skip_locked=True).cte("candidates")
    earliest = select(func.min(locked.c[due_column])).scalar_subquery()
    stamped = session.execute(
        update(table).where(table.c.id == locked.c.id, earliest <= now).values(values).returning(table.c.id)
    )
    return sorted(stamped.scalars().all())


def _claim_in_two_statements(
    session: Session, table: Table, candidates: Select[int, datetime], values: dict[str, object], *, now: datetime
) -> list[int]:
    """SQLite: this write transaction holds the database, so nothing moves in between.
    MySQL/MariaDB: the candidates come locked (``FOR UPDATE SKIP LOCKED``) until commit.
    Rows locked but not due yet stay unstamped; the lock ends with the transaction."""
    rows = session.execute(candidates).all()
    if not rows or rows[0][1] > now:
        return []
    row_ids: list[int] = [row[0] for row in rows]
    session.execute(update(table).where(table.c.id.in_(row_ids)).values(values))
    return row_ids
