"""Prompt registry: prompts, immutable versions, labels and the label history; an index on
spans for per prompt version usage.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 02:21:07.691313
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_prompts_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_prompts_project_id_name")),
    )
    op.create_table(
        "prompt_label_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_label_events_prompt_id_prompts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_label_events")),
    )
    with op.batch_alter_table("prompt_label_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_prompt_label_events_project_id_prompt_id_label_id"),
            ["project_id", "prompt_id", "label", "id"],
            unique=False,
        )

    op.create_table(
        "prompt_labels",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_labels_prompt_id_prompts")
        ),
        sa.PrimaryKeyConstraint("project_id", "prompt_id", "label", name=op.f("pk_prompt_labels")),
    )
    op.create_table(
        "prompt_versions",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=80), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("git_sha", sa.String(length=64), nullable=True),
        sa.Column("partials", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_versions_prompt_id_prompts")
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "prompt_id", "version", name=op.f("pk_prompt_versions")
        ),
        sa.UniqueConstraint(
            "project_id",
            "prompt_id",
            "content_hash",
            name=op.f("uq_prompt_versions_project_id_prompt_id_content_hash"),
        ),
    )
    # A plain CREATE INDEX (no batch table copy): the spans table may already be large.
    # Partial: most spans name no prompt, and their index entries would tax every insert.
    op.create_index(
        op.f("ix_spans_project_id_prompt_name_prompt_version_start_ns"),
        "spans",
        ["project_id", "prompt_name", "prompt_version", "start_ns"],
        unique=False,
        sqlite_where=sa.text("prompt_name IS NOT NULL"),
        postgresql_where=sa.text("prompt_name IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_spans_project_id_prompt_name_prompt_version_start_ns"), table_name="spans"
    )
    op.drop_table("prompt_versions")
    op.drop_table("prompt_labels")
    with op.batch_alter_table("prompt_label_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prompt_label_events_project_id_prompt_id_label_id"))

    op.drop_table("prompt_label_events")
    op.drop_table("prompts")
