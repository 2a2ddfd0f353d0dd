"""Releases: immutable release bundles, routes per environment, rollouts and their history;
an index on spans for canary analysis by release.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 05:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("content_hash", sa.String(length=80), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_releases_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", "release_id", name=op.f("pk_releases")),
    )
    op.create_index(
        op.f("ix_releases_project_id_name_created_at"),
        "releases",
        ["project_id", "name", "created_at"],
        unique=False,
    )
    op.create_table(
        "release_routes",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("environment", sa.String(length=64), nullable=False),
        sa.Column("release_id", sa.String(length=64), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_release_routes_project_id_projects")
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "route", "environment", name=op.f("pk_release_routes")
        ),
    )
    op.create_table(
        "release_rollouts",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("environment", sa.String(length=64), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("stable_release_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_release_id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("analysis", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("gate", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_release_rollouts_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", "rollout_id", name=op.f("pk_release_rollouts")),
    )
    op.create_index(
        op.f("ix_release_rollouts_project_id_route_environment_state"),
        "release_rollouts",
        ["project_id", "route", "environment", "state"],
        unique=False,
    )
    op.create_table(
        "release_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("environment", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=True),
        sa.Column("stable_release_id", sa.String(length=64), nullable=True),
        sa.Column("candidate_release_id", sa.String(length=64), nullable=True),
        sa.Column("strategy", sa.String(length=16), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_events")),
    )
    op.create_index(
        op.f("ix_release_events_project_id_route_environment_at"),
        "release_events",
        ["project_id", "route", "environment", "at"],
        unique=False,
    )
    # A plain CREATE INDEX (no batch table copy): the spans table may already be large.
    op.create_index(
        op.f("ix_spans_project_id_release_id_start_ns"),
        "spans",
        ["project_id", "release_id", "start_ns"],
        unique=False,
        sqlite_where=sa.text("release_id IS NOT NULL"),
        postgresql_where=sa.text("release_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_spans_project_id_release_id_start_ns"), table_name="spans")
    op.drop_index(
        op.f("ix_release_events_project_id_route_environment_at"), table_name="release_events"
    )
    op.drop_table("release_events")
    op.drop_index(
        op.f("ix_release_rollouts_project_id_route_environment_state"),
        table_name="release_rollouts",
    )
    op.drop_table("release_rollouts")
    op.drop_table("release_routes")
    op.drop_index(op.f("ix_releases_project_id_name_created_at"), table_name="releases")
    op.drop_table("releases")
