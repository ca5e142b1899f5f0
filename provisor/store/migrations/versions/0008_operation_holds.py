"""operation holds: plan batches held by the removal guard

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="events")
        )
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("hold_id", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_operations_hold_id"), ["hold_id"])
        batch.create_foreign_key(
            batch.f("fk_operations_hold_id_holds"), "holds", ["hold_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_constraint(batch.f("fk_operations_hold_id_holds"), type_="foreignkey")
        batch.drop_index(batch.f("ix_operations_hold_id"))
        batch.drop_column("hold_id")
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("details")
        batch.drop_column("kind")
