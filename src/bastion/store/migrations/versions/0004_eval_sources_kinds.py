"""Evals: run kind (quality or redteam) and the prompt version a run evaluated; links from
dataset items to the production spans they were made from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 04:55:00.000000
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="quality", nullable=False)
        )
        batch_op.add_column(sa.Column("prompt_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("prompt_version", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_eval_runs_project_id_prompt_name_prompt_version_started_at"),
            ["project_id", "prompt_name", "prompt_version", "started_at"],
            unique=False,
        )
    _backfill_prompt_versions()
    op.create_table(
        "eval_item_sources",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=200), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["eval_datasets.id"],
            name=op.f("fk_eval_item_sources_dataset_version_id_eval_datasets"),
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "dataset_version_id", "item_id", name=op.f("pk_eval_item_sources")
        ),
    )
    with op.batch_alter_table("eval_item_sources", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_eval_item_sources_project_id_trace_id"),
            ["project_id", "trace_id"],
            unique=False,
        )


def _backfill_prompt_versions() -> None:
    """Runs recorded before this migration keep their prompt in the target JSON only."""
    conn = op.get_bind()
    runs = sa.table(
        "eval_runs",
        sa.column("project_id", sa.Integer),
        sa.column("run_id", sa.String),
        sa.column("target", sa.Text),
        sa.column("prompt_name", sa.String),
        sa.column("prompt_version", sa.Integer),
    )
    rows = conn.execute(sa.select(runs.c.project_id, runs.c.run_id, runs.c.target)).all()
    for row in rows:
        try:
            target = orjson.loads(row.target)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(target, dict) or target.get("kind") != "prompt":
            continue
        version = target.get("version")
        conn.execute(
            runs.update()
            .where(runs.c.project_id == row.project_id, runs.c.run_id == row.run_id)
            .values(
                prompt_name=str(target.get("name"))[:200],
                prompt_version=version if isinstance(version, int) else None,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("eval_item_sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_item_sources_project_id_trace_id"))
    op.drop_table("eval_item_sources")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_index(
            batch_op.f("ix_eval_runs_project_id_prompt_name_prompt_version_started_at")
        )
        batch_op.drop_column("prompt_version")
        batch_op.drop_column("prompt_name")
        batch_op.drop_column("kind")
