"""outbox: resent_at (a resent event's retries run from its resend) and an index for
delivering one order's events in order

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tracker.db.types


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resent_at', tracker.db.types.UTCDateTime(), nullable=True))
        batch_op.create_index(
            'ix_outbox_events_order_pending', ['order_id', 'id'], unique=False,
            postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'),
        )


def downgrade() -> None:
    # MySQL serves the order_id foreign key with this index (it dropped its own when this
    # one came): the key goes while the index goes, and comes back with its own index.
    on_mysql = op.get_bind().dialect.name in ('mysql', 'mariadb')
    if on_mysql:
        op.drop_constraint('fk_outbox_events_order_id_orders', 'outbox_events', type_='foreignkey')
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_events_order_pending', postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))
        batch_op.drop_column('resent_at')
    if on_mysql:
        op.create_foreign_key(
            'fk_outbox_events_order_id_orders', 'outbox_events', 'orders', ['order_id'], ['id'], ondelete='SET NULL'
        )
