"""Deferred roll-ups: span batches record their roll-up counters in span_rollup_deltas, folded
into span_rollups about once a second instead of upserted in every ingest transaction.

Downgrade folds whatever deltas are left into span_rollups first, so no count is lost.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 11:20:00.000000
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ADDITIVE = (
    "span_count",
    "error_count",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_unknown_count",
)


def upgrade() -> None:
    op.create_table(
        "span_rollup_deltas",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("totals", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_span_rollup_deltas")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # A document is a few tens of KiB and lives about a second: not worth compressing.
        op.execute("ALTER TABLE span_rollup_deltas ALTER COLUMN totals SET STORAGE EXTERNAL")


def downgrade() -> None:
    bind = op.get_bind()
    # Self-contained on purpose: the fold of the running code may not match this revision.
    rows = bind.execute(sa.text("SELECT project_id, totals FROM span_rollup_deltas")).all()
    assignments = ", ".join(f"{c} = span_rollups.{c} + :{c}" for c in _ADDITIVE)
    upsert = sa.text(
        f"INSERT INTO span_rollups (project_id, dimension, hour, value, {', '.join(_ADDITIVE)},"
        " latency_hist, ttft_hist) VALUES (:project_id, :dimension, :hour, :value,"
        f" {', '.join(':' + c for c in _ADDITIVE)}, :latency_hist, :ttft_hist)"
        " ON CONFLICT (project_id, dimension, hour, value) DO UPDATE SET"
        f" {assignments},"
        " latency_hist = bastion_hist_merge(span_rollups.latency_hist, :latency_hist),"
        " ttft_hist = bastion_hist_merge(span_rollups.ttft_hist, :ttft_hist)"
    )
    for project_id, totals in rows:
        for dimension, hour, value, *counters, latency, ttft in orjson.loads(totals):
            params = dict(zip(_ADDITIVE, counters, strict=True))
            bind.execute(
                upsert,
                {
                    "project_id": project_id,
                    "dimension": dimension,
                    "hour": hour,
                    "value": value,
                    **params,
                    "latency_hist": orjson.dumps(latency).decode(),
                    "ttft_hist": orjson.dumps(ttft).decode(),
                },
            )
    op.drop_table("span_rollup_deltas")
