"""Reading the audit log: filtered pages, newest first, and every record in order for export."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bastion.audit.log import AuditRecord
from bastion.store.schema import audit_log

__all__ = ["AuditFilter", "AuditPage", "iter_records", "list_records"]


def _matches(column: sa.ColumnElement[str], pattern: str) -> sa.ColumnElement[bool]:
    """Equal to ``pattern``, or starting with it when it ends in ``*`` (``rollout.*``)."""
    if not pattern.endswith("*"):
        return column == pattern
    prefix = pattern[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(prefix + "%", escape="\\")


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records to read. ``project_id`` None reads every project's and the operator-wide
    ones (the CLI on the database); the API always sets it to the caller's project."""

    project_id: int | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    actor: str | None = None  # exact, or a prefix ending in * (key:*)
    action: str | None = None  # exact, or a prefix ending in * (rollout.*)
    object: str | None = None  # TYPE or TYPE:ID (the id may end in *)

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if self.project_id is not None:
            where.append(audit_log.c.project_id == self.project_id)
        if self.since is not None:
            where.append(audit_log.c.at >= self.since)
        if self.until is not None:
            where.append(audit_log.c.at < self.until)
        if self.actor is not None:
            where.append(_matches(audit_log.c.actor, self.actor))
        if self.action is not None:
            where.append(_matches(audit_log.c.action, self.action))
        if self.object is not None:
            object_type, sep, object_id = self.object.partition(":")
            where.append(audit_log.c.object_type == object_type)
            if sep:
                where.append(_matches(audit_log.c.object_id, object_id))
        return where


@dataclass(frozen=True, slots=True)
class AuditPage:
    """Records newest first; ``next_cursor`` reads the page after (None: this was the last)."""

    items: list[AuditRecord]
    next_cursor: int | None


def list_records(
    conn: sa.Connection, where: AuditFilter, *, limit: int = 100, before_seq: int | None = None
) -> AuditPage:
    """One page of records matching ``where``, newest first, older than ``before_seq``."""
    query = sa.select(audit_log).where(*where.conditions())
    if before_seq is not None:
        query = query.where(audit_log.c.seq < before_seq)
    rows = conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit + 1)).all()
    items = [AuditRecord.from_row(row) for row in rows[:limit]]
    return AuditPage(items, items[-1].seq if len(rows) > limit else None)


def iter_records(
    conn: sa.Connection, where: AuditFilter | None = None, *, batch: int = 1000
) -> Iterator[AuditRecord]:
    """Every record matching ``where``, oldest first, read ``batch`` at a time."""
    conditions = [] if where is None else where.conditions()
    after = -1
    while True:
        rows = conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.seq > after, *conditions)
            .order_by(audit_log.c.seq)
            .limit(batch)
        ).all()
        for row in rows:
            yield AuditRecord.from_row(row)
        if len(rows) < batch:
            return
        after = int(rows[-1].seq)
