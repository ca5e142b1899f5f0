"""inbound SCIM: the Users and Groups identity providers push, and group members; who
recorded each lifecycle event

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scim_resources",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name_key", sa.String(length=512), nullable=True),
        sa.Column("external_id", sa.String(length=512), nullable=True),
        sa.Column("identity", sa.String(length=128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("modified_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scim_resources")),
        sa.UniqueConstraint("kind", "name_key", name="uq_scim_resources_kind_name_key"),
    )
    op.create_index(op.f("ix_scim_resources_external_id"), "scim_resources", ["external_id"])
    op.create_index(op.f("ix_scim_resources_identity"), "scim_resources", ["identity"])
    op.create_table(
        "scim_members",
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "member_id", name=op.f("pk_scim_members")),
    )
    op.create_index(op.f("ix_scim_members_member_id"), "scim_members", ["member_id"])
    # the guard of a source of single changes counts its recent leavers
    op.create_index("ix_identity_events_kind_recorded", "identity_events", ["kind", "recorded_at"])
    with op.batch_alter_table("identity_events") as batch:
        batch.add_column(sa.Column("recorded_by", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identity_events") as batch:
        batch.drop_column("recorded_by")
    op.drop_index("ix_identity_events_kind_recorded", table_name="identity_events")
    op.drop_index(op.f("ix_scim_members_member_id"), table_name="scim_members")
    op.drop_table("scim_members")
    op.drop_index(op.f("ix_scim_resources_identity"), table_name="scim_resources")
    op.drop_index(op.f("ix_scim_resources_external_id"), table_name="scim_resources")
    op.drop_table("scim_resources")
