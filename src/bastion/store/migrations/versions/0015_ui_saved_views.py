"""The web UI's saved trace-list views (``ui_saved_views``).

Downgrade drops the table and the views saved in it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_saved_views",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_ui_saved_views_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_ui_saved_views_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ui_saved_views")),
        sa.UniqueConstraint(
            "project_id", "user_id", "name", name=op.f("uq_ui_saved_views_project_id_user_id_name")
        ),
    )
    op.create_index(
        op.f("ix_ui_saved_views_project_id_shared"),
        "ui_saved_views",
        ["project_id", "shared"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_saved_views_project_id_shared"), table_name="ui_saved_views")
    op.drop_table("ui_saved_views")
