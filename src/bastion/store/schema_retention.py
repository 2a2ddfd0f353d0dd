"""The retention table: how far each project's retention job has got.

Dropping payloads rewrites span rows; without a mark, every pass would read again every span
it already emptied. ``retention_marks`` keeps, per project and kind, the start time below
which the job has done its work (``bastion.retention``).
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.store.schema_base import metadata
from bastion.store.types import UtcDateTime

__all__ = ["retention_marks"]

retention_marks = sa.Table(
    "retention_marks",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    # What the mark is for: "payload" (spans whose payload was dropped).
    sa.Column("kind", sa.String(16), nullable=False),
    # Spans that started before this (Unix ns) are done.
    sa.Column("through_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "kind"),
)
