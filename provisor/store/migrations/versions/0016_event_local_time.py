"""event local time: the local time an event was given as, so it moves with its person's zone

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_events") as batch:
        batch.add_column(sa.Column("local_time", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identity_events") as batch:
        batch.drop_column("local_time")
