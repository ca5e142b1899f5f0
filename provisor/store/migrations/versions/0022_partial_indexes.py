"""partial indexes: columns most rows leave empty index only the rows that have a value

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

# (table, column): an identity's owner (non-human identities only), its next dated change and
# its next review (few have one); an event's or operation's hold (held ones only)
PARTIAL = (
    ("identities", "owner"),
    ("identities", "next_change_at"),
    ("identities", "review_at"),
    ("identity_events", "hold_id"),
    ("operations", "hold_id"),
)


def upgrade() -> None:
    for table, column in PARTIAL:
        name = f"ix_{table}_{column}"
        op.drop_index(name, table_name=table)
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, table, [column], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for table, column in PARTIAL:
        name = f"ix_{table}_{column}"
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column])
