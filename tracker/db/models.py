"""The schema, as SQLAlchemy 2.0 typed mappings.

The database is the source of truth for what is due: ``orders.next_poll_at`` says when an
order must next be polled, and doubles as its lease while a poll is in flight (see
``tracker.db.claims``). History tables (``order_events``, ``refill_events``) are
append-only: rows are inserted, never updated or deleted. ``refill_attempts`` rows are
written before their call and completed once with its answer.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tracker.db.types import BigIntPK, Money, Real, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def due_index(name: str, *columns: str) -> Index:
    """A partial index over rows that are not final: what a claim query walks, so its cost
    follows the active rows, not the whole history. MySQL and MariaDB have no partial
    indexes: there migration 0009 builds it with ``final`` as its second column (its
    first for the outbox), to the same effect."""
    return Index(name, *columns, postgresql_where=text("NOT final"), sqlite_where=text("final = 0"))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Polled:
    """Columns of a row the dispatcher polls (orders and refills): its due time and lease,
    its claim, and what the state machine needs between answers."""

    final: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When the provider's answer that this row reflects was requested. Older answers that
    # arrive late are ignored, so a slow poll can never move a row backwards.
    last_observed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Due time, and the lease's end while a poll batch holds the row.
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set while a poll batch holds the row; a task whose claim no longer matches does nothing.
    claim_id: Mapped[int | None] = mapped_column(BigInteger)
    unchanged_polls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    consecutive_not_found: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Events recorded so far: the next event's seq is event_count + 1.
    event_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Provider(Base):
    __tablename__ = "providers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    api_url: Mapped[str] = mapped_column(String(2048))
    # Fernet token; see tracker.providers.secrets. The plain key never touches the database.
    api_key_encrypted: Mapped[str] = mapped_column(Text)
    key_hint: Mapped[str] = mapped_column(String(16))
    batch_size: Mapped[int] = mapped_column(Integer, default=100)
    rate_limit: Mapped[float] = mapped_column(Real, default=5.0)
    poll_interval: Mapped[float | None] = mapped_column(Real)
    refill_days: Mapped[int] = mapped_column(Integer, default=30)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    paused_reason: Mapped[str | None] = mapped_column(String(255))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    circuit_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Learned from the provider: None until tried. Some panels only answer single `refill=`.
    supports_multi_refill_status: Mapped[bool | None] = mapped_column(Boolean)
    # Likewise for `status`: some panels only answer single `order=` (polling/orders.py).
    supports_multi_status: Mapped[bool | None] = mapped_column(Boolean)
    balance: Mapped[Decimal | None] = mapped_column(Money)
    balance_currency: Mapped[str | None] = mapped_column(String(8))
    balance_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    balance_alert_below: Mapped[Decimal | None] = mapped_column(Money)
    catalog_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Scheduled refill policy: request a refill every N hours inside the guarantee window.
    # None: TRACKER_AUTO_REFILL_HOURS decides; 0: off for this provider.
    auto_refill_hours: Mapped[float | None] = mapped_column(Real)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Hours after a refill was sent before another refill of the same order may go out.
    # None: TRACKER_REFILL_COOLDOWN_HOURS decides.
    refill_cooldown_hours: Mapped[float | None] = mapped_column(Real)
    # Set only while the provider is paused because it rejected the API key: when its key
    # is next probed (see tracker.providers.key_probe). NULL for any other pause, which
    # therefore never ends by itself.
    key_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Probes rejected since the pause: the back-off's exponent.
    key_probe_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    services: Mapped[list[Service]] = relationship(back_populates="provider")


class Service(Base):
    """One entry of a provider's services catalog."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("provider_id", "service_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(Text)
    type: Mapped[str | None] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(Text)
    rate: Mapped[Decimal | None] = mapped_column(Money)
    min: Mapped[int | None] = mapped_column(BigInteger)
    max: Mapped[int | None] = mapped_column(BigInteger)
    refill: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel: Mapped[bool | None] = mapped_column(Boolean)
    # Overrides of the provider's defaults, set by the operator, kept across catalog syncs.
    refill_days: Mapped[int | None] = mapped_column(Integer)
    auto_refill_hours: Mapped[float | None] = mapped_column(Real)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refill_cooldown_hours: Mapped[float | None] = mapped_column(Real)

    provider: Mapped[Provider] = relationship(back_populates="services")


class Order(Polled, Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("provider_id", "external_id"),
        # The dispatcher's claim query walks this index only: due, active orders.
        due_index("ix_orders_due", "provider_id", "next_poll_at"),
        # Orders by provider and status (`tracker stats`, the exporter's scrape) from the
        # index alone: an index-only scan, not a scan of every order's row.
        Index("ix_orders_status_counts", "provider_id", "final", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    external_id: Mapped[int] = mapped_column(BigInteger)
    service_id: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    link: Mapped[str | None] = mapped_column(Text)
    # None until the first successful poll: the tracker has not seen the order yet.
    status: Mapped[str | None] = mapped_column(String(32))
    raw_status: Mapped[str | None] = mapped_column(String(64))
    remains: Mapped[int | None] = mapped_column(BigInteger)
    charge: Mapped[Decimal | None] = mapped_column(Money)
    start_count: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(8))
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # False once the provider said refill is disabled for this order.
    refillable: Mapped[bool | None] = mapped_column(Boolean)
    next_auto_refill_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the count probe last read this order's count (None: never).
    count_probed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    provider: Mapped[Provider] = relationship()


class OrderEvent(Base):
    """One observed change of an order. ``seq`` numbers them per order, from 1.

    The unique (order_id, seq) is the last line of defence against a transition being
    recorded twice by two workers racing on the same order.
    """

    __tablename__ = "order_events"
    __table_args__ = (UniqueConstraint("order_id", "seq"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    raw_status: Mapped[str | None] = mapped_column(String(64))
    remains: Mapped[int | None] = mapped_column(BigInteger)
    charge: Mapped[Decimal | None] = mapped_column(Money)
    start_count: Mapped[int | None] = mapped_column(BigInteger)


class Drop(Base):
    """A drop in an order's count, reported by the shop (``source='shop'``) or read by the
    count probe (``'probe'``). A scheduled auto-refill records no drop: it never saw one."""

    __tablename__ = "drops"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(16))
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    observed_count: Mapped[int | None] = mapped_column(BigInteger)
    expected_count: Mapped[int | None] = mapped_column(BigInteger)
    eligible: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)


class RefillRequest(Base):
    """Our effort to get a refill accepted for one drop, retried until it ends.

    ``state``: ``pending`` (will retry at ``next_attempt_at``), ``accepted``,
    ``gave_up`` (window closed, refill disabled, or attempt cap reached). ``final`` is
    ``state != 'pending'``, kept as a column for the dispatcher's partial index.
    ``trigger``: ``drop`` (a recorded drop, ``drop_id``) or ``schedule`` (auto-refill).

    ``next_attempt_at`` doubles as the lease while an attempt is claimed (see
    ``tracker.db.claims``); it is None once the request has ended.
    """

    __tablename__ = "refill_requests"
    __table_args__ = (
        due_index("ix_refill_requests_due", "provider_id", "next_attempt_at"),
        # At most one refill request in flight per order, whatever races the workers run.
        # MySQL has no partial index: there it is the generated column below.
        Index(
            "uq_refill_requests_one_pending",
            "order_id",
            unique=True,
            postgresql_where=text("NOT final"),
            sqlite_where=text("final = 0"),
        ).ddl_if(dialect=("postgresql", "sqlite")),  # type: ignore[arg-type]  # a tuple works, the stubs say str
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    drop_id: Mapped[int | None] = mapped_column(ForeignKey("drops.id", ondelete="SET NULL"))
    trigger: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    final: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claim_id: Mapped[int | None] = mapped_column(BigInteger)
    last_message: Mapped[str | None] = mapped_column(Text)
    refill_id: Mapped[int | None] = mapped_column(ForeignKey("refills.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# MySQL / MariaDB (migration 0006): the one-open-request rule as a UNIQUE index on a
# column that is order_id while the request is open and NULL once final. Not mapped: the
# ORM never reads or writes it, and PostgreSQL and SQLite do not have it.
event.listen(
    RefillRequest.__table__,
    "after_create",
    DDL(  # type: ignore[no-untyped-call]
        "ALTER TABLE refill_requests "
        "ADD COLUMN pending_order_id BIGINT AS (IF(final, NULL, order_id)) VIRTUAL, "
        "ADD UNIQUE INDEX uq_refill_requests_one_pending (pending_order_id)"
    ).execute_if(dialect=("mysql", "mariadb")),  # type: ignore[arg-type]
)


class RefillAttempt(Base):
    """Every call we made to request a refill, and what came of it.

    The row is written, as ``sent``, and committed before the call goes out; its outcome
    is filled in once, with the answer. A row still ``sent`` after its request's lease
    is an answer lost. Rows are never deleted."""

    __tablename__ = "refill_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("refill_requests.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)


class Refill(Polled, Base):
    """A refill the provider accepted, polled through ``refill_status`` to its end."""

    __tablename__ = "refills"
    __table_args__ = (
        UniqueConstraint("provider_id", "external_id"),
        due_index("ix_refills_due", "provider_id", "next_poll_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))
    raw_status: Mapped[str | None] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RefillEvent(Base):
    __tablename__ = "refill_events"
    __table_args__ = (UniqueConstraint("refill_id", "seq"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    refill_id: Mapped[int] = mapped_column(ForeignKey("refills.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    raw_status: Mapped[str | None] = mapped_column(String(64))


class CancelRequest(Base):
    """One ``cancel`` we sent for an order, and the provider's answer. Append-only.

    ``outcome``: ``accepted``, ``refused`` (by the provider, or by us before sending:
    service without cancel, order final or unknown), or ``unknown`` (the call failed
    after it may have been executed; cancel is never repeated automatically).
    """

    __tablename__ = "cancel_requests"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)


class OutboxEvent(Base):
    """An event for the shop, written in the same transaction as the change it reports,
    then delivered (webhook, Celery task) at least once by ``tracker.deliver_events``.

    ``final`` is set once delivered or given up; ``next_attempt_at`` is the due time and,
    while a delivery task holds the row, its lease (same pattern as polling).
    """

    __tablename__ = "outbox_events"
    __table_args__ = (
        due_index("ix_outbox_events_due", "next_attempt_at"),
        # An event waits for its order's earlier undelivered events: found through this.
        due_index("ix_outbox_events_order_pending", "order_id", "id"),
        # Failed events (the exporter counts them at each scrape): few, so a partial index.
        Index(
            "ix_outbox_events_failed",
            "failed_at",
            postgresql_where=text("failed_at IS NOT NULL"),
            sqlite_where=text("failed_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(48))
    provider_id: Mapped[int | None] = mapped_column(ForeignKey("providers.id", ondelete="SET NULL"))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    final: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claim_id: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by `tracker events resend`: retries then run for TRACKER_WEBHOOK_RETRY_FOR from here.
    resent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
