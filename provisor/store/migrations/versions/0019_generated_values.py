"""generated values: user names and other attributes made from templates, and who holds each

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generated_values",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("attribute", sa.String(128), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("value_key", sa.String(256), nullable=False),
        sa.Column("identity", sa.String(128), nullable=True),
        sa.Column("stem", sa.String(256), nullable=True),
        sa.Column("assigned_at", sa.DateTime(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generated_values")),
        sa.UniqueConstraint("attribute", "value_key", name=op.f("uq_generated_values_attribute")),
    )
    op.create_index("ix_generated_values_holder", "generated_values", ["attribute", "identity"])


def downgrade() -> None:
    op.drop_index("ix_generated_values_holder", "generated_values")
    op.drop_table("generated_values")
