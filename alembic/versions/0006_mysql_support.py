"""MySQL / MariaDB: what PostgreSQL and SQLite have and MySQL needs in another form

- At most one open refill request per order: PostgreSQL and SQLite have a partial UNIQUE
  index (WHERE NOT final); MySQL has no partial index, so 0001 made it a plain UNIQUE
  index on order_id there, which would forbid a second request ever. It becomes a UNIQUE
  index on a generated column that is order_id while the request is open and NULL once
  it is final (UNIQUE allows any number of NULLs).
- FLOAT is single precision on MySQL: the settings stored in floats become DOUBLE.
- Text compares by code point, as on PostgreSQL: utf8mb4 with the binary collation, so
  provider names and refill IDs that differ in case stay different, whatever the
  database's default collation.

Nothing changes on PostgreSQL or SQLite.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    'providers', 'services', 'orders', 'order_events', 'drops', 'refills', 'refill_events',
    'refill_requests', 'refill_attempts', 'cancel_requests', 'outbox_events',
)
# Float columns and their nullability.
FLOATS = {
    'providers': {
        'rate_limit': 'NOT NULL', 'poll_interval': 'NULL', 'auto_refill_hours': 'NULL',
        'refill_cooldown_hours': 'NULL',
    },
    'services': {'auto_refill_hours': 'NULL', 'refill_cooldown_hours': 'NULL'},
}


def _on_mysql() -> bool:
    return op.get_bind().dialect.name in ('mysql', 'mariadb')


def _floats_as(type_: str) -> None:
    for table, columns in FLOATS.items():
        changes = ', '.join(f'MODIFY {name} {type_} {null}' for name, null in columns.items())
        op.execute(f'ALTER TABLE {table} {changes}')


def upgrade() -> None:
    if not _on_mysql():
        return
    for table in TABLES:
        op.execute(f'ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin')
    _floats_as('DOUBLE')
    op.execute('DROP INDEX uq_refill_requests_one_pending ON refill_requests')
    op.execute(
        'ALTER TABLE refill_requests '
        'ADD COLUMN pending_order_id BIGINT AS (IF(final, NULL, order_id)) VIRTUAL, '
        'ADD UNIQUE INDEX uq_refill_requests_one_pending (pending_order_id)'
    )


def downgrade() -> None:
    if not _on_mysql():
        return
    op.execute('ALTER TABLE refill_requests DROP INDEX uq_refill_requests_one_pending, DROP COLUMN pending_order_id')
    # Not UNIQUE: orders with several ended requests would refuse it. 0001's downgrade
    # drops it by this name.
    op.execute('CREATE INDEX uq_refill_requests_one_pending ON refill_requests (order_id)')
    _floats_as('FLOAT')
