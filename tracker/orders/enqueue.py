"""Start tracking order IDs handed over by the shop. Idempotent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tracker.db.models import Order
from tracker.core.ids import RefusedId, parse_order_ids, parse_positive
from tracker.providers.lookup import provider_by_name

# Rows per INSERT statement: well under PostgreSQL's 65,535 bind parameters.
INSERT_CHUNK = 2000
# Refusals named one by one in the log and in the task's result; the count has them all.
# Twenty fit the 4 KiB of the result Flower shows (``tracker.orders.tasks``).
SHOWN_REFUSALS = 20


@dataclass(slots=True)
class TrackResult:
    provider: str
    added: int = 0
    already_tracked: int = 0
    duplicates: int = 0
    rejected: list[RefusedId] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"{self.provider}: {self.added} new, {self.already_tracked} already tracked"
            f", {len(self.rejected)} rejected"
        )
        if self.duplicates:
            text += f", {self.duplicates} duplicates ignored"
        return text

    def task_result(self) -> dict[str, Any]:
        """What ``tracker.track_orders`` returns, and Flower shows. ``rejected`` stays a
        count, as before; ``refused`` names the first refusals with their reasons: each
        value as the shop sent it, or by its type and length when long (``core.ids``)."""
        return {
            "added": self.added,
            "already_tracked": self.already_tracked,
            "rejected": len(self.rejected),
            "refused": [{"id": value, "reason": reason} for _, reason, value in self.rejected[:SHOWN_REFUSALS]],
        }


def track_orders(
    session: Session,
    provider_name: object,
    raw_ids: Iterable[object],
    *,
    service: object = None,
    quantity: object = None,
    now: datetime,
) -> TrackResult:
    """Register order IDs; valid ones are tracked even when others in the call are not."""
    provider = provider_by_name(session, provider_name)
    service_id = parse_positive("service", service)
    ordered = parse_positive("quantity", quantity)
    parsed = parse_order_ids(raw_ids)
    result = TrackResult(provider.name, duplicates=parsed.duplicates, rejected=parsed.rejected)
    for start in range(0, len(parsed.valid), INSERT_CHUNK):
        chunk = parsed.valid[start : start + INSERT_CHUNK]
        added = _insert_new(session, provider.id, chunk, service_id, ordered, now)
        result.added += added
        result.already_tracked += len(chunk) - added
        if added < len(chunk):
            # An order first tracked without its service or quantity learns them now.
            for column, value in ((Order.service_id, service_id), (Order.quantity, ordered)):
                if value is not None:
                    session.execute(
                        update(Order)
                        .where(Order.provider_id == provider.id, Order.external_id.in_(chunk), column.is_(None))
                        .values({column: value, Order.updated_at: now})
                        .execution_options(synchronize_session=False)
                    )
    return result


def _insert_new(
    session: Session,
    provider_id: int,
    external_ids: list[int],
    service_id: int | None,
    quantity: int | None,
    now: datetime,
) -> int:
    rows = [
        {
            "provider_id": provider_id,
            "external_id": external_id,
            "service_id": service_id,
            "quantity": quantity,
            "next_poll_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for external_id in external_ids
    ]
    conflict_columns = ["provider_id", "external_id"]
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        # MySQL has neither ON CONFLICT nor INSERT ... RETURNING. IGNORE skips the orders
        # already tracked (the unique provider_id, external_id); the driver batches the
        # rows into multi-row INSERTs and adds up the rows each one inserted.
        result = session.connection().execute(insert(Order).prefix_with("IGNORE"), rows)
        return int(result.rowcount)
    statement = (
        pg_insert(Order).on_conflict_do_nothing(index_elements=conflict_columns)
        if dialect == "postgresql"
        else sqlite_insert(Order).on_conflict_do_nothing(index_elements=conflict_columns)
    )
    # executemany: SQLAlchemy batches the rows into multi-row INSERTs itself
    # ("insertmanyvalues") and keeps RETURNING, without compiling one giant statement.
    inserted = session.execute(statement.returning(Order.id), rows).scalars().all()
    return len(inserted)


