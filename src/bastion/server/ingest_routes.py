"""The ingest API under ``/api/v1/ingest``: the spans the database refused (dead letters)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from bastion.auth import Permission
from bastion.server.auth import authenticate
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_query
from bastion.server.route_access import needs
from bastion.services.state import STATE
from bastion.store.dead_letters import RejectPage, list_rejects

__all__ = ["INGEST_ROUTES"]


class RejectListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=1000)
    cursor: str | None = Field(None, description="next_cursor from the previous page")


async def list_ingest_rejects(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.TRACES_READ)
    params = parse_query(request, RejectListQuery)
    engine = request.app[STATE].engine

    def work() -> RejectPage:
        with engine.connect() as conn:
            return list_rejects(
                conn, principal.project_id, limit=params.limit, cursor=params.cursor
            )

    try:
        page = await DB.run(work)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return json_response(page)


INGEST_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/api/v1/ingest/rejects",
        list_ingest_rejects,
        "Spans the database refused, kept in the dead-letter store, newest first",
        "ingest",
        query=RejectListQuery,
        response=RejectPage,
        access=needs(Permission.TRACES_READ),
    ),
]
