"""The dead-letter store of ingestion: spans the database refused, kept with the reason.

A batch the database refuses for a data reason is split until the refused spans are found;
the rest is committed and each refused span lands here, whole, instead of being retried
forever (bastion.ingest.isolation). Downgrade drops the table and what it holds.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_rejects",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("error_class", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_rejects")),
        sa.UniqueConstraint(
            "project_id",
            "trace_id",
            "span_id",
            name=op.f("uq_ingest_rejects_project_id_trace_id_span_id"),
        ),
    )
    op.create_index(op.f("ix_ingest_rejects_project_id_id"), "ingest_rejects", ["project_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ingest_rejects_project_id_id"), table_name="ingest_rejects")
    op.drop_table("ingest_rejects")
