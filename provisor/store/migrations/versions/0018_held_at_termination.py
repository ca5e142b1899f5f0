"""held at termination: what a person held when a termination took effect, for a rescind

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "held_at_termination",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("termination", sa.String(64), nullable=False),
        sa.Column("terminated_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("grants", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_held_at_termination")),
        sa.UniqueConstraint(
            "identity", "termination", name=op.f("uq_held_at_termination_identity")
        ),
    )
    op.create_index("ix_held_at_termination_identity", "held_at_termination", ["identity"])
    op.create_index(
        "ix_held_at_termination_terminated_at", "held_at_termination", ["terminated_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_held_at_termination_terminated_at", "held_at_termination")
    op.drop_index("ix_held_at_termination_identity", "held_at_termination")
    op.drop_table("held_at_termination")
