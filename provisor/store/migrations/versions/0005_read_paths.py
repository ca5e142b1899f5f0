"""read paths: what probes showed about each way of reading a target

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "target_read_paths",
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("target", "path", name=op.f("pk_target_read_paths")),
    )


def downgrade() -> None:
    op.drop_table("target_read_paths")
