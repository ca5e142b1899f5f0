"""open work indexes: each target's open operations, and its open removals, in id order

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# as the models say them (provisor.store.models.OPEN_WORK, OPEN_REMOVALS), frozen here
OPEN_WORK = "status IN ('pending', 'running')"
OPEN_REMOVALS = (
    OPEN_WORK + " AND kind IN ('delete', 'disable', 'remove-entitlement', 'revoke-sessions')"
)


def upgrade() -> None:
    for name, where in (
        ("ix_operations_open", OPEN_WORK),
        ("ix_operations_open_removals", OPEN_REMOVALS),
    ):
        op.create_index(
            name,
            "operations",
            ["target", "id"],
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade() -> None:
    op.drop_index("ix_operations_open_removals", table_name="operations")
    op.drop_index("ix_operations_open", table_name="operations")
