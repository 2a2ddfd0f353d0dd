"""``GET /api/v1/audit``: the caller's project's audit records, and the audit retention job.

Only admins read the audit log, and only their own project's records: operator-wide records
(breakers, budgets that are not a project's, pruning) are read with ``bastion audit list`` on
the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, Field

from bastion.audit import AuditFilter, AuditRecord, list_records, prune_expired
from bastion.auth import Permission
from bastion.runtime.background import ThreadWork
from bastion.server.auth import authenticate
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_query
from bastion.server.route_access import needs
from bastion.services.state import STATE, AppState
from bastion.settings import Settings

__all__ = ["AUDIT_ROUTES", "install_audit"]

log = logging.getLogger("bastion.audit")

PRUNE_INTERVAL_S = 3600.0
_MAX_SEQ = 2**63 - 1

# The filters are the CLI's (bastion audit list).
_PATTERN = "exact, or a prefix ending in *"


class AuditQuery(BaseModel):
    since: datetime | None = Field(None, description="records at or after this time")
    until: datetime | None = Field(None, description="records before this time")
    actor: str | None = Field(
        None, max_length=300, description=f"user:NAME, key:ID or system:COMPONENT ({_PATTERN})"
    )
    action: str | None = Field(
        None, max_length=100, description=f"e.g. label.move or rollout.* ({_PATTERN})"
    )
    object: str | None = Field(
        None, max_length=620, description="TYPE or TYPE:ID, e.g. prompt:greeting"
    )
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(
        None, max_length=20, description="next_cursor from the previous page"
    )


class AuditRecordOut(BaseModel):
    seq: int = Field(description="the record's number: consecutive, without gaps")
    at: datetime
    actor: str
    project_id: int | None
    action: str
    object_type: str
    object_id: str
    before_digest: str | None = Field(description="sha256 of the object's state before")
    after_digest: str | None = Field(description="sha256 of the object's state after")
    details: dict[str, Any] | None
    reason: str | None
    request_id: str | None
    prev_hash: str
    hash: str
    hash_mode: str = Field(description="sha256 or hmac-sha256")


class AuditPageOut(BaseModel):
    items: list[AuditRecordOut] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as cursor for older records; null: done")


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _cursor(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= _MAX_SEQ:
        raise ApiError(400, f"invalid query parameter 'cursor': {raw!r} is not a next_cursor")
    return int(raw)


def _out(rec: AuditRecord) -> dict[str, Any]:
    return rec.to_dict() | {"at": rec.at.astimezone(UTC).isoformat()}


async def list_audit(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.AUDIT_READ)
    q = parse_query(request, AuditQuery)
    where = AuditFilter(
        project_id=principal.project_id,
        since=_utc(q.since),
        until=_utc(q.until),
        actor=q.actor,
        action=q.action,
        object=q.object,
    )
    before = _cursor(q.cursor)
    page = await DB.read(
        request, lambda c: list_records(c, where, limit=q.limit, before_seq=before)
    )
    cursor = None if page.next_cursor is None else str(page.next_cursor)
    return json_response({"items": [_out(r) for r in page.items], "next_cursor": cursor})


AUDIT_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/api/v1/audit",
        list_audit,
        "The project's audit records, newest first (admin only)",
        "audit",
        query=AuditQuery,
        response=AuditPageOut,
        access=needs(Permission.AUDIT_READ),
    ),
]


async def _prune_periodically(state: AppState, work: ThreadWork) -> None:
    """Prune audit records past ``audit.retention_days`` every hour."""
    while True:
        try:
            pruned = await work.run(prune_expired, state.engine, state.audit, state.settings.audit)
        except (sa.exc.SQLAlchemyError, OSError, RuntimeError) as exc:
            log.warning("audit retention failed (retrying in an hour): %s", exc)
        else:
            if pruned:
                log.info("audit retention pruned %d records", pruned)
        await asyncio.sleep(PRUNE_INTERVAL_S)


def install_audit(app: web.Application, settings: Settings) -> None:
    """The audit API, and pruning by ``audit.retention_days`` when it is set (one process of
    ``serve --workers``; replicas sharing a database take turns on the chain head)."""
    app.router.add_routes([route.aiohttp() for route in AUDIT_ROUTES])
    if settings.audit.retention_days is None or settings.worker_index not in (None, 0):
        return

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        work = ThreadWork()
        task = asyncio.create_task(_prune_periodically(app[STATE], work))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await work.drain()

    app.cleanup_ctx.append(lifecycle)
