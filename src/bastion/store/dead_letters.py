"""The dead-letter store of ingestion: spans the database refused, and why.

A span lands here when the database refuses it for a data reason even after the storable
rule (:mod:`bastion.store.storable`): the batch holding it is split until it is found
(:mod:`bastion.ingest.isolation`), the rest of the batch is committed, and this span is kept
whole as JSON, with its project, the reason label, the database's error class and message,
and the time. Nothing here is retried: a person reads it (``GET /api/v1/ingest/rejects``,
``bastion ingest rejects``) and decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql, sqlite

from bastion.store.schema import ingest_rejects
from bastion.store.storable import storable_json, storable_key, storable_text
from bastion.store.write_errors import reject_reason, root_error
from bastion.tracing.model import Span

__all__ = [
    "IngestReject",
    "RejectPage",
    "Rejected",
    "count_by_reason",
    "has_nul",
    "list_rejects",
    "span_record",
    "store_rejects",
]

_SPAN_FIELDS = tuple(f.name for f in fields(Span))
_MESSAGE_CHARS = 500


@dataclass(slots=True)
class Rejected:
    """A span the database refused, with the error that refused it alone."""

    project_id: int
    span: Span
    error: BaseException

    @property
    def reason(self) -> str:
        return reject_reason(self.error, has_nul=has_nul(span_record(self.span)))


def span_record(span: Span) -> dict[str, Any]:
    """Every field of ``span`` by name (what the store keeps, before the storable rule)."""
    return {name: getattr(span, name) for name in _SPAN_FIELDS}


def has_nul(value: Any) -> bool:
    """True when a text anywhere in ``value`` (keys included) holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


def store_rejects(conn: sa.Connection, rejected: Sequence[Rejected]) -> None:
    """Keep ``rejected`` in the caller's transaction (a span kept before is kept once)."""
    if not rejected:
        return
    now = datetime.now(UTC)
    rows = []
    for item in rejected:
        root = root_error(item.error)
        record = span_record(item.span)
        rows.append(
            {
                "project_id": item.project_id,
                "trace_id": storable_key(str(item.span.trace_id), 32),
                "span_id": storable_key(str(item.span.span_id), 16),
                "reason": reject_reason(item.error, has_nul=has_nul(record)),
                "error_class": storable_text(
                    f"{type(root).__module__}.{type(root).__qualname__}", 200
                ),
                "message": storable_text(str(root) or type(root).__name__, _MESSAGE_CHARS),
                "record": storable_json(record),
                "rejected_at": now,
            }
        )
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
        ingest_rejects
    )
    stmt = insert.on_conflict_do_nothing(index_elements=["project_id", "trace_id", "span_id"])
    conn.execute(stmt, rows)


class IngestReject(BaseModel):
    """One refused span: what the database said and the span as it arrived (made storable)."""

    id: int
    trace_id: str
    span_id: str
    reason: str = Field(description="nul, encoding, range, length or database_data_error")
    error_class: str = Field(description="the database driver's error class")
    message: str
    rejected_at: datetime
    record: dict[str, Any] = Field(description="every field of the span, by name")


class RejectPage(BaseModel):
    """A page of refused spans, newest first; ``next_cursor`` is null on the last page."""

    items: list[IngestReject]
    next_cursor: str | None = None


def list_rejects(
    conn: sa.Connection, project_id: int, *, limit: int = 50, cursor: str | None = None
) -> RejectPage:
    """The project's refused spans, newest first; ``cursor`` is a page's ``next_cursor``."""
    r = ingest_rejects.c
    query = sa.select(ingest_rejects).where(r.project_id == project_id)
    if cursor is not None:
        # Ids are 64-bit: more digits could only overflow in the database.
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise ValueError(f"invalid cursor {cursor!r}: use next_cursor from the last page")
        query = query.where(r.id < int(cursor))
    rows = list(conn.execute(query.order_by(r.id.desc()).limit(limit + 1)))
    items = [_reject(row) for row in rows[:limit]]
    more = len(rows) > limit
    return RejectPage(items=items, next_cursor=str(items[-1].id) if more and items else None)


def _reject(row: Any) -> IngestReject:
    rejected_at = row.rejected_at
    if rejected_at.tzinfo is None:
        rejected_at = rejected_at.replace(tzinfo=UTC)
    return IngestReject(
        id=row.id,
        trace_id=row.trace_id,
        span_id=row.span_id,
        reason=row.reason,
        error_class=row.error_class,
        message=row.message,
        rejected_at=rejected_at,
        record=orjson.loads(row.record),
    )


def count_by_reason(rejected: Iterable[Rejected]) -> dict[str, int]:
    """How many of ``rejected`` fall under each reason label."""
    counts: dict[str, int] = {}
    for item in rejected:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return counts
