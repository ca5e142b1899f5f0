"""identity review: when time alone changes an identity's access, apart from its next change

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.add_column(sa.Column("review_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_identities_review_at", ["review_at"])


def downgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.drop_index("ix_identities_review_at")
        batch.drop_column("review_at")
