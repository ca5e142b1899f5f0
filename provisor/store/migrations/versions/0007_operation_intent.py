"""operation intent: the run about to write an operation, recorded before the write

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("intent_run", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("intent_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("intent_at")
        batch.drop_column("intent_run")
