"""Initial schema: projects, API keys, spans, traces and hourly span roll-ups.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 13:44:51.459890
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# Adds two sparse histograms encoded as JSON objects {bucket: count}; SQLite gets the same
# function from Python on connect (bastion.store.engine).
_PG_HIST_MERGE = """
CREATE OR REPLACE FUNCTION bastion_hist_merge(a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT COALESCE(jsonb_object_agg(k, total)::text, '{}') FROM (
    SELECT k, SUM(v::bigint) AS total FROM (
      SELECT key AS k, value AS v FROM jsonb_each_text(COALESCE(a, '{}')::jsonb)
      UNION ALL
      SELECT key, value FROM jsonb_each_text(COALESCE(b, '{}')::jsonb)
    ) AS parts GROUP BY k
  ) AS sums
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_HIST_MERGE)
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("slug", name=op.f("uq_projects_slug")),
    )
    op.create_table(
        "span_rollups",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("dimension", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("span_count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("cost_unknown_count", sa.BigInteger(), nullable=False),
        sa.Column("latency_hist", sa.Text(), nullable=False),
        sa.Column("ttft_hist", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id", "dimension", "hour", "value", name=op.f("pk_span_rollups")
        ),
    )
    op.create_table(
        "spans",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.Column("parent_span_id", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("service_name", sa.String(length=200), nullable=True),
        sa.Column("operation", sa.String(length=64), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("request_model", sa.String(length=200), nullable=True),
        sa.Column("response_model", sa.String(length=200), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error_class", sa.String(length=200), nullable=True),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("session_id", sa.String(length=200), nullable=True),
        sa.Column("feature", sa.String(length=200), nullable=True),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("prompt_name", sa.String(length=200), nullable=True),
        sa.Column("prompt_version", sa.Integer(), nullable=True),
        sa.Column("release_id", sa.String(length=64), nullable=True),
        sa.Column("input", sa.Text(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("ingested_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "trace_id", "span_id", name=op.f("pk_spans")),
    )
    with op.batch_alter_table("spans", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_spans_project_id_request_model_start_ns"),
            ["project_id", "request_model", "start_ns"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_spans_project_id_start_ns"), ["project_id", "start_ns"], unique=False
        )

    op.create_table(
        "traces",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("root_span_id", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=500), nullable=True),
        sa.Column("span_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("llm_count", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("session_id", sa.String(length=200), nullable=True),
        sa.Column("feature", sa.String(length=200), nullable=True),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("service_name", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "trace_id", name=op.f("pk_traces")),
    )
    with op.batch_alter_table("traces", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_traces_project_id_feature_start_ns"),
            ["project_id", "feature", "start_ns"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_traces_project_id_session_id_start_ns"),
            ["project_id", "session_id", "start_ns"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_traces_project_id_start_ns"), ["project_id", "start_ns"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_traces_project_id_tenant_start_ns"),
            ["project_id", "tenant", "start_ns"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_traces_project_id_user_id_start_ns"),
            ["project_id", "user_id", "start_ns"],
            unique=False,
        )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_api_keys_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_keys_project_id_id"), ["project_id", "id"], unique=False
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS bastion_hist_merge(text, text)")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_project_id_id"))

    op.drop_table("api_keys")
    with op.batch_alter_table("traces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_traces_project_id_user_id_start_ns"))
        batch_op.drop_index(batch_op.f("ix_traces_project_id_tenant_start_ns"))
        batch_op.drop_index(batch_op.f("ix_traces_project_id_start_ns"))
        batch_op.drop_index(batch_op.f("ix_traces_project_id_session_id_start_ns"))
        batch_op.drop_index(batch_op.f("ix_traces_project_id_feature_start_ns"))

    op.drop_table("traces")
    with op.batch_alter_table("spans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spans_project_id_start_ns"))
        batch_op.drop_index(batch_op.f("ix_spans_project_id_request_model_start_ns"))

    op.drop_table("spans")
    op.drop_table("span_rollups")
    op.drop_table("projects")
