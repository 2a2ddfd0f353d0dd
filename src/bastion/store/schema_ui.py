"""The web UI's table: the trace-list views people save (``ui_saved_views``).

A saved view is a name for a traces-list URL's query (filters, sort), owned by the person who
saved it in one project. It is theirs alone unless ``shared``, when everyone in the project
sees it too; only its owner may delete it.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.store.schema_base import metadata
from bastion.store.types import UtcDateTime

__all__ = ["ui_saved_views"]

ui_saved_views = sa.Table(
    "ui_saved_views",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    # The traces list's query string, as the UI writes it (normalised, without a cursor).
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("shared", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("project_id", "user_id", "name"),
    sa.Index(None, "project_id", "shared"),
)
