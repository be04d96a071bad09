"""outbox events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:02:38.623752
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tracker.db.types


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('outbox_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('provider_id', sa.Integer(), nullable=True),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('final', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('next_attempt_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('claim_id', sa.BigInteger(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('failed_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_outbox_events_order_id_orders'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_outbox_events_provider_id_providers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_outbox_events_event_id'))
    )
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_events_due', ['next_attempt_at'], unique=False, postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))




def downgrade() -> None:

    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_events_due', postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))

    op.drop_table('outbox_events')

