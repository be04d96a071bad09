"""due indexes on MySQL / MariaDB lead with `final`

PostgreSQL and SQLite keep the due indexes partial (`WHERE NOT final`): they hold only the
rows still to be polled or delivered. MySQL and MariaDB have no partial indexes, so theirs
held every row, final ones included, ordered by due time, and final rows keep their last
due time, long past: a claim (`final = 0 AND due <= now ORDER BY due`) walked the history
before the first live row. Orders were spared by `ix_orders_status_counts` (0007), which
the optimizer took instead; refills, refill requests and outbox events were not. Measured
on MariaDB 10.11 with 200,000 delivered events kept for inspection: a tick's
`claim_due_events` took 243-284 ms before, 50-91 ms after (its purge of old events
scans the rest); with 200,000 final orders, the dispatcher's check for due rows of a
provider 7 ms before, 1.7 ms after. With `final` right after the provider, the same
queries read only the live rows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:00:00.000000
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# index name -> (table, columns before, columns after)
INDEXES = {
    'ix_orders_due': ('orders', 'provider_id, next_poll_at', 'provider_id, final, next_poll_at'),
    'ix_refills_due': ('refills', 'provider_id, next_poll_at', 'provider_id, final, next_poll_at'),
    'ix_refill_requests_due': (
        'refill_requests', 'provider_id, next_attempt_at', 'provider_id, final, next_attempt_at'
    ),
    'ix_outbox_events_due': ('outbox_events', 'next_attempt_at', 'final, next_attempt_at'),
}


def _on_mysql() -> bool:
    return op.get_bind().dialect.name in ('mysql', 'mariadb')


def _rebuild(columns_of: int) -> None:
    for name, (table, *columns) in INDEXES.items():
        # One statement per table: the old index serves the claims until the new one is in.
        op.execute(f'ALTER TABLE {table} DROP INDEX {name}, ADD INDEX {name} ({columns[columns_of]})')


def upgrade() -> None:
    if _on_mysql():
        _rebuild(1)


def downgrade() -> None:
    if _on_mysql():
        _rebuild(0)
