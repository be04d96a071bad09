"""refill cool-down per provider and service

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('providers') as batch:
        batch.add_column(sa.Column('refill_cooldown_hours', sa.Float(), nullable=True))
    with op.batch_alter_table('services') as batch:
        batch.add_column(sa.Column('refill_cooldown_hours', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('services') as batch:
        batch.drop_column('refill_cooldown_hours')
    with op.batch_alter_table('providers') as batch:
        batch.drop_column('refill_cooldown_hours')
