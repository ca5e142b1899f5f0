"""circuits: each target's circuit breaker; work items an automated target's read-back verifies

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "target_circuits",
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("probe_at", sa.DateTime(), nullable=True),
        sa.Column("probes", sa.Integer(), nullable=False),
        sa.Column("probe_error", sa.Text(), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_target_circuits")),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("read_back", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("read_back")
    op.drop_table("target_circuits")
