"""source records: what each of several feeds last said of each person, and who they are

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed", sa.String(128), nullable=False),
        sa.Column("source_id", sa.String(128), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("start", sa.String(40), nullable=True),
        sa.Column("ends", sa.String(40), nullable=True),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_records")),
        sa.UniqueConstraint("feed", "source_id", name=op.f("uq_source_records_feed")),
    )
    op.create_index("ix_source_records_identity", "source_records", ["identity"])


def downgrade() -> None:
    op.drop_index("ix_source_records_identity", "source_records")
    op.drop_table("source_records")
