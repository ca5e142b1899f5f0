"""reconciliation: runs with checkpoints, correlation cases, account marks, debt snapshots

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("observed_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reconcile_run", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("classification", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("classified_detail", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("classified_at", sa.DateTime(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_observed_accounts_reconcile_run"), ["reconcile_run"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_observed_accounts_classification"), ["classification"], unique=False
        )
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("checkpoint", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
    )
    with op.batch_alter_table("reconcile_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reconcile_runs_target"), ["target"], unique=False)
        batch_op.create_index(batch_op.f("ix_reconcile_runs_status"), ["status"], unique=False)
    op.create_table(
        "correlation_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("account", sa.String(length=512), nullable=False),
        sa.Column("user_name", sa.String(length=512), nullable=True),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_identity", sa.String(length=128), nullable=True),
        sa.Column("resolved_by", sa.String(length=256), nullable=True),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_correlation_cases")),
    )
    with op.batch_alter_table("correlation_cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_correlation_cases_target"), ["target"], unique=False)
        batch_op.create_index(batch_op.f("ix_correlation_cases_status"), ["status"], unique=False)
    op.create_table(
        "account_marks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("account", sa.String(length=512), nullable=False),
        sa.Column("mark", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("marked_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_marks")),
        sa.UniqueConstraint("target", "account", name="uq_account_marks_key"),
    )
    op.create_table(
        "debt_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reconcile_run", sa.Integer(), nullable=True),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("overdue", sa.Integer(), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_debt_snapshots")),
    )
    with op.batch_alter_table("debt_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_debt_snapshots_at"), ["at"], unique=False)


def downgrade() -> None:
    op.drop_table("debt_snapshots")
    op.drop_table("account_marks")
    op.drop_table("correlation_cases")
    op.drop_table("reconcile_runs")
    with op.batch_alter_table("observed_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_observed_accounts_classification"))
        batch_op.drop_index(batch_op.f("ix_observed_accounts_reconcile_run"))
        batch_op.drop_column("classified_at")
        batch_op.drop_column("classified_detail")
        batch_op.drop_column("classification")
        batch_op.drop_column("reconcile_run")
