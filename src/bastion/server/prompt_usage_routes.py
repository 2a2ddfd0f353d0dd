"""``GET /api/v1/prompts/{name}/usage``: lineage and usage per prompt version (read role)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from bastion.auth import Permission
from bastion.prompts.registry_queries import RegistryError
from bastion.prompts.usage import PromptUsage, parse_since, prompt_usage
from bastion.server.auth import authenticate
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_query
from bastion.server.route_access import needs
from bastion.services.state import STATE

__all__ = ["PROMPT_USAGE_ROUTES"]


class UsageQuery(BaseModel):
    since: str | None = Field(
        None, max_length=64, description="30m, 24h, 7d or an ISO 8601 time (default: all time)"
    )
    recent: int = Field(5, ge=0, le=100, description="recent trace ids per version")


async def usage(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_READ)
    params = parse_query(request, UsageQuery)
    name = request.match_info["name"]
    engine = request.app[STATE].engine

    def work() -> PromptUsage:
        since = parse_since(params.since)
        with engine.connect() as conn:
            return prompt_usage(conn, principal.project_id, name, since=since, recent=params.recent)

    try:
        found = await DB.run(work)
    except RegistryError as exc:
        raise ApiError(exc.status, str(exc), kind=exc.kind) from exc
    return json_response(found)


PROMPT_USAGE_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/api/v1/prompts/{name}/usage",
        usage,
        "Per version: label deployments, spans, traces, error rate, p95 latency, tokens, cost",
        "prompts",
        query=UsageQuery,
        response=PromptUsage,
        access=needs(Permission.PROMPTS_READ),
        errors=((404, "the prompt is neither in the registry nor on any span"),),
    ),
]
