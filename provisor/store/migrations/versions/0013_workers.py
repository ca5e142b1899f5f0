"""workers: target rate limits and concurrency slots shared by every worker; on PostgreSQL,
the job queue's schema

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "target_limits",
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("stamp", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_target_limits")),
    )
    op.create_table(
        "target_slots",
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run", sa.String(length=32), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("target", "slot", name=op.f("pk_target_slots")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # procrastinate's tables (``procrastinate_*``): the queue ``provisor worker`` reads
        from procrastinate.schema import SchemaManager

        exists = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
        if exists is None:
            # as one script, with no parameters: the driver leaves its '%' signs alone
            cursor = bind.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(SchemaManager.get_schema())
            finally:
                cursor.close()


def downgrade() -> None:
    # the queue's tables stay: they may hold jobs, and belong to procrastinate's own schema
    op.drop_table("target_slots")
    op.drop_table("target_limits")
