"""Erasure under ``/api/v1/erasures``, and the retention job of the server.

``POST /api/v1/erasures`` (admin keys only) erases one user's, session's or trace's data from
the caller's project and answers with the summary (``bastion.retention.erasure``): counts and
the subject as a digest, never the erased content.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bastion.auth import Permission
from bastion.retention import (
    ErasureBusy,
    ErasureError,
    ErasureRequest,
    ErasureSummary,
    RetentionJob,
    erase,
    wants_job,
)
from bastion.server.auth import authenticate
from bastion.server.db_work import DbWork
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_body
from bastion.server.route_access import needs
from bastion.services.state import STATE
from bastion.settings import Settings

__all__ = ["ERASURE_ROUTES", "install_retention"]


class ErasureBody(BaseModel):
    """What to erase: exactly one of ``user``, ``trace`` or ``session``."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, max_length=200, description="a user id, as on the spans")
    trace: str | None = Field(None, max_length=32, description="a trace id (32 hex characters)")
    session: str | None = Field(None, max_length=200, description="a session id")


class ErasureOut(BaseModel):
    """What the erasure removed from the project: counts only."""

    subject: str = Field(description="user, trace or session")
    subject_sha256: str = Field(description="SHA-256 of 'project id:subject:id'")
    traces: int = Field(description="traces deleted whole (spans, payloads, trace rows)")
    derived_traces: int = Field(description="of those, traces of eval runs over derived items")
    spans: int
    dataset_items: int = Field(description="dataset items made from those traces")
    dataset_versions: int = Field(description="dataset versions that lost items")
    eval_results: int
    eval_scores: int
    rollup_rows: int = Field(description="roll-up rows naming the user (user erasures)")
    rejects: int = Field(description="dead letters of those traces or naming the subject")
    storage: str = Field(description="what became of the erased bytes on this database")
    actor: str = Field(description="who asked for the erasure")
    seconds: float


def _busy(exc: Exception) -> ApiError:
    return ApiError(503, str(exc), kind="unavailable")


_db = DbWork((ErasureBusy,), _busy)


async def create_erasure(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.ERASURE_RUN)
    body = parse_body(await request.read() or b"{}", ErasureBody)
    try:
        erasure = ErasureRequest.of(
            principal.project_id, user=body.user, trace=body.trace, session=body.session
        )
    except ErasureError as exc:
        raise ApiError(400, f"invalid body: {exc}") from exc
    state = request.app[STATE]

    def work() -> ErasureSummary:
        return erase(state.engine, erasure, writer=state.pipeline.writer, actor=principal.actor)

    summary = await _db.run(work)
    return json_response(ErasureOut.model_validate(summary.to_dict()))


ERASURE_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "POST",
        "/api/v1/erasures",
        create_erasure,
        "Erase a user's, session's or trace's data (and what was made from it) from the project",
        "retention",
        body=ErasureBody,
        response=ErasureOut,
        access=needs(Permission.ERASURE_RUN),
        errors=((503, "the database was too busy to finish; ask again"),),
    ),
]


def install_retention(app: web.Application, settings: Settings) -> None:
    """The erasure API, and the retention job while the server runs (when ``wants_job``)."""
    app.router.add_routes([route.aiohttp() for route in ERASURE_ROUTES])
    if not wants_job(settings):
        return

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        job = RetentionJob(
            state.engine, settings, registry=state.registry, writer=state.pipeline.writer
        )
        task = asyncio.create_task(job.run())
        try:
            yield
        finally:
            job.close()  # a pass stops at its next batch
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await job.work.drain()

    app.cleanup_ctx.append(lifecycle)
