"""generated basis: what a generated value's templates read when it was made

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generated_values") as batch:
        batch.add_column(sa.Column("basis", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generated_values") as batch:
        batch.drop_column("basis")
