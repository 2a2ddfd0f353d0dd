"""Spans carry the gateway's request id, and a client's span of a gateway call its duplicate mark.

``spans.request_id`` holds the ``x-request-id`` of the calls the gateway served (searchable by
it through a partial index of gateway spans only); ``spans.duplicate_of`` marks a client's span
of a call the gateway traced too, so that the call is counted once (``bastion.store
.call_links``). A second partial index finds, for a batch, the traces holding a gateway call
made inside a caller's span. Both columns start empty: spans stored before are left as they
were (nothing identifies their gateway spans after the fact).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_GATEWAY = "request_id IS NOT NULL"
_GATEWAY_CHILD = "request_id IS NOT NULL AND parent_span_id IS NOT NULL"


def upgrade() -> None:
    op.add_column("spans", sa.Column("request_id", sa.String(length=128), nullable=True))
    op.add_column("spans", sa.Column("duplicate_of", sa.String(length=16), nullable=True))
    op.create_index(
        "ix_spans_project_id_request_id",
        "spans",
        ["project_id", "request_id"],
        sqlite_where=sa.text(_GATEWAY),
        postgresql_where=sa.text(_GATEWAY),
    )
    op.create_index(
        "ix_spans_project_id_trace_seq_parent_span_id",
        "spans",
        ["project_id", "trace_seq", "parent_span_id"],
        sqlite_where=sa.text(_GATEWAY_CHILD),
        postgresql_where=sa.text(_GATEWAY_CHILD),
    )


def downgrade() -> None:
    op.drop_index("ix_spans_project_id_trace_seq_parent_span_id", table_name="spans")
    op.drop_index("ix_spans_project_id_request_id", table_name="spans")
    # Plain ALTER TABLE on both (SQLite 3.35+): a batch rebuild would copy every span.
    op.execute("ALTER TABLE spans DROP COLUMN duplicate_of")
    op.execute("ALTER TABLE spans DROP COLUMN request_id")
