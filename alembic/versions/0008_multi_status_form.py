"""multi status form: whether a provider answers `status` with `orders=`, learned

Some panels (the MSM "SMM Script" family) read only `order=`: their orders are then
polled one per call. NULL until the provider's answers have told.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 23:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('supports_multi_status', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.drop_column('supports_multi_status')
