"""key probe: providers paused for a rejected API key are probed with back-off

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import tracker.db.types


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What tracker.providers.health wrote as the reason before this revision.
KEY_PAUSE_REASON = "the provider rejected the API key"


def upgrade() -> None:
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_probe_at', tracker.db.types.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('key_probe_failures', sa.Integer(), server_default='0', nullable=False))
    # Providers already paused for a rejected key get probed from now on; any other pause
    # (an operator's) keeps key_probe_at NULL and is never resumed automatically.
    providers = sa.table(
        'providers',
        sa.column('paused', sa.Boolean()),
        sa.column('paused_reason', sa.String()),
        sa.column('key_probe_at', tracker.db.types.UTCDateTime()),
    )
    op.execute(
        providers.update()
        .where(providers.c.paused == sa.true(), providers.c.paused_reason == KEY_PAUSE_REASON)
        .values(key_probe_at=datetime.now(UTC))
    )


def downgrade() -> None:
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.drop_column('key_probe_failures')
        batch_op.drop_column('key_probe_at')
