"""indexes that keep `tracker exporter`'s scrape-time counts cheap

Orders by (provider, final, status): the per-status counts of `tracker stats` and the
exporter become an index-only scan instead of a scan of the whole table. Outbox events
that failed: a small partial index, so counting failures never scans the week of
delivered events kept for inspection.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILED = sa.text('failed_at IS NOT NULL')


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_status_counts', ['provider_id', 'final', 'status'], unique=False)
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.create_index(
            'ix_outbox_events_failed', ['failed_at'], unique=False,
            postgresql_where=FAILED, sqlite_where=FAILED,
        )


def downgrade() -> None:
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_events_failed', postgresql_where=FAILED, sqlite_where=FAILED)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_status_counts')
