"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 03:28:07.041881
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tracker.db.types


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('providers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('api_url', sa.String(length=2048), nullable=False),
    sa.Column('api_key_encrypted', sa.Text(), nullable=False),
    sa.Column('key_hint', sa.String(length=16), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('rate_limit', sa.Float(), nullable=False),
    sa.Column('poll_interval', sa.Float(), nullable=True),
    sa.Column('refill_days', sa.Integer(), nullable=False),
    sa.Column('paused', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('paused_reason', sa.String(length=255), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('circuit_open_until', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('supports_multi_refill_status', sa.Boolean(), nullable=True),
    sa.Column('balance', tracker.db.types.Money(), nullable=True),
    sa.Column('balance_currency', sa.String(length=8), nullable=True),
    sa.Column('balance_checked_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('balance_alert_below', tracker.db.types.Money(), nullable=True),
    sa.Column('catalog_synced_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('auto_refill_hours', sa.Float(), nullable=True),
    sa.Column('created_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_providers')),
    sa.UniqueConstraint('name', name=op.f('uq_providers_name'))
    )
    op.create_table('orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.BigInteger(), nullable=False),
    sa.Column('service_id', sa.BigInteger(), nullable=True),
    sa.Column('quantity', sa.BigInteger(), nullable=True),
    sa.Column('link', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('raw_status', sa.String(length=64), nullable=True),
    sa.Column('remains', sa.BigInteger(), nullable=True),
    sa.Column('charge', tracker.db.types.Money(), nullable=True),
    sa.Column('start_count', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=8), nullable=True),
    sa.Column('final', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('last_observed_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('next_poll_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('claim_id', sa.BigInteger(), nullable=True),
    sa.Column('unchanged_polls', sa.Integer(), server_default='0', nullable=False),
    sa.Column('consecutive_not_found', sa.Integer(), server_default='0', nullable=False),
    sa.Column('event_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('completed_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('refillable', sa.Boolean(), nullable=True),
    sa.Column('next_auto_refill_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('count_probed_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('created_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_orders_provider_id_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('provider_id', 'external_id', name=op.f('uq_orders_provider_id'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_due', ['provider_id', 'next_poll_at'], unique=False, postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))

    op.create_table('services',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider_id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('type', sa.String(length=128), nullable=True),
    sa.Column('category', sa.Text(), nullable=True),
    sa.Column('rate', tracker.db.types.Money(), nullable=True),
    sa.Column('min', sa.BigInteger(), nullable=True),
    sa.Column('max', sa.BigInteger(), nullable=True),
    sa.Column('refill', sa.Boolean(), nullable=False),
    sa.Column('cancel', sa.Boolean(), nullable=True),
    sa.Column('refill_days', sa.Integer(), nullable=True),
    sa.Column('auto_refill_hours', sa.Float(), nullable=True),
    sa.Column('updated_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_services_provider_id_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_services')),
    sa.UniqueConstraint('provider_id', 'service_id', name=op.f('uq_services_provider_id'))
    )
    op.create_table('cancel_requests',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('requested_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_cancel_requests_order_id_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cancel_requests'))
    )
    with op.batch_alter_table('cancel_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cancel_requests_order_id'), ['order_id'], unique=False)

    op.create_table('drops',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('detected_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('observed_count', sa.BigInteger(), nullable=True),
    sa.Column('expected_count', sa.BigInteger(), nullable=True),
    sa.Column('eligible', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_drops_order_id_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drops'))
    )
    with op.batch_alter_table('drops', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_drops_order_id'), ['order_id'], unique=False)

    op.create_table('order_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('from_status', sa.String(length=32), nullable=True),
    sa.Column('to_status', sa.String(length=32), nullable=False),
    sa.Column('raw_status', sa.String(length=64), nullable=True),
    sa.Column('remains', sa.BigInteger(), nullable=True),
    sa.Column('charge', tracker.db.types.Money(), nullable=True),
    sa.Column('start_count', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_order_events_order_id_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_order_events')),
    sa.UniqueConstraint('order_id', 'seq', name=op.f('uq_order_events_order_id'))
    )
    op.create_table('refills',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('raw_status', sa.String(length=64), nullable=True),
    sa.Column('final', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('last_observed_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('next_poll_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('claim_id', sa.BigInteger(), nullable=True),
    sa.Column('unchanged_polls', sa.Integer(), server_default='0', nullable=False),
    sa.Column('consecutive_not_found', sa.Integer(), server_default='0', nullable=False),
    sa.Column('event_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('requested_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_refills_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_refills_provider_id_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refills')),
    sa.UniqueConstraint('provider_id', 'external_id', name=op.f('uq_refills_provider_id'))
    )
    with op.batch_alter_table('refills', schema=None) as batch_op:
        batch_op.create_index('ix_refills_due', ['provider_id', 'next_poll_at'], unique=False, postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))
        batch_op.create_index(batch_op.f('ix_refills_order_id'), ['order_id'], unique=False)

    op.create_table('refill_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('refill_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('from_status', sa.String(length=32), nullable=True),
    sa.Column('to_status', sa.String(length=32), nullable=False),
    sa.Column('raw_status', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['refill_id'], ['refills.id'], name=op.f('fk_refill_events_refill_id_refills'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refill_events')),
    sa.UniqueConstraint('refill_id', 'seq', name=op.f('uq_refill_events_refill_id'))
    )
    op.create_table('refill_requests',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('drop_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('final', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', tracker.db.types.UTCDateTime(), nullable=True),
    sa.Column('claim_id', sa.BigInteger(), nullable=True),
    sa.Column('last_message', sa.Text(), nullable=True),
    sa.Column('refill_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['drop_id'], ['drops.id'], name=op.f('fk_refill_requests_drop_id_drops'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_refill_requests_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_refill_requests_provider_id_providers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['refill_id'], ['refills.id'], name=op.f('fk_refill_requests_refill_id_refills'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refill_requests'))
    )
    with op.batch_alter_table('refill_requests', schema=None) as batch_op:
        batch_op.create_index('ix_refill_requests_due', ['provider_id', 'next_attempt_at'], unique=False, postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))
        batch_op.create_index(batch_op.f('ix_refill_requests_order_id'), ['order_id'], unique=False)
        batch_op.create_index('uq_refill_requests_one_pending', ['order_id'], unique=True, postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))

    op.create_table('refill_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', tracker.db.types.UTCDateTime(), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['refill_requests.id'], name=op.f('fk_refill_attempts_request_id_refill_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refill_attempts'))
    )
    with op.batch_alter_table('refill_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refill_attempts_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('refill_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refill_attempts_request_id'))

    op.drop_table('refill_attempts')
    with op.batch_alter_table('refill_requests', schema=None) as batch_op:
        batch_op.drop_index('uq_refill_requests_one_pending', postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))
        batch_op.drop_index(batch_op.f('ix_refill_requests_order_id'))
        batch_op.drop_index('ix_refill_requests_due', postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))

    op.drop_table('refill_requests')
    op.drop_table('refill_events')
    with op.batch_alter_table('refills', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refills_order_id'))
        batch_op.drop_index('ix_refills_due', postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))

    op.drop_table('refills')
    op.drop_table('order_events')
    with op.batch_alter_table('drops', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_drops_order_id'))

    op.drop_table('drops')
    with op.batch_alter_table('cancel_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cancel_requests_order_id'))

    op.drop_table('cancel_requests')
    op.drop_table('services')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_due', postgresql_where=sa.text('NOT final'), sqlite_where=sa.text('final = 0'))

    op.drop_table('orders')
    op.drop_table('providers')
