"""account leases: one runner at a time per account, lost when it stops renewing

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_leases",
        sa.Column("identity", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("run", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=160), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("identity", "target", name=op.f("pk_account_leases")),
    )
    op.create_index(op.f("ix_account_leases_run"), "account_leases", ["run"])


def downgrade() -> None:
    op.drop_index(op.f("ix_account_leases_run"), table_name="account_leases")
    op.drop_table("account_leases")
