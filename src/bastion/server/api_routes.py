"""The read API (traces, spans, metrics) and key management, under ``/api/v1``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from bastion.auth import Permission, Role, key_changes, list_keys
from bastion.server.audit_trail import request_trail
from bastion.server.auth import authenticate
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_body, parse_query
from bastion.server.route_access import needs
from bastion.services.state import STATE
from bastion.store import queries

__all__ = ["API_ROUTES"]


def _ns(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000_000)


class _FilterQuery(BaseModel):
    start: datetime | None = Field(None, description="from this time (ISO 8601), inclusive")
    end: datetime | None = Field(None, description="until this time (ISO 8601), exclusive")
    user: str | None = Field(None, description="user id")
    session: str | None = Field(None, description="session id")
    feature: str | None = None
    tenant: str | None = None
    model: str | None = Field(None, description="model asked for or served")
    status: Literal["ok", "error"] | None = None
    error_class: str | None = None
    q: str | None = Field(None, description="text contained in an input or output", max_length=500)
    # Bounded so the latency in nanoseconds fits the store's 64-bit columns.
    min_latency_ms: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)
    min_cost_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    service: str | None = None
    request_id: str | None = Field(
        None,
        description="the x-request-id the gateway answered with: its call's span, or the trace"
        " holding it",
        max_length=128,
    )

    def to_filter(self) -> queries.TraceFilter:
        return queries.TraceFilter(
            start_ns=_ns(self.start),
            end_ns=_ns(self.end),
            user_id=self.user,
            session_id=self.session,
            feature=self.feature,
            tenant=self.tenant,
            model=self.model,
            status=self.status,
            error_class=self.error_class,
            text=self.q,
            min_latency_ms=self.min_latency_ms,
            min_cost_usd=self.min_cost_usd,
            service_name=self.service,
            request_id=self.request_id,
        )


class TraceListQuery(_FilterQuery):
    limit: int = Field(50, ge=1, le=1000)
    cursor: str | None = Field(None, description="next_cursor from the previous page")


class SpanListQuery(TraceListQuery):
    operation: str | None = Field(
        None, description="chat, embeddings, …, or event (breaker transitions, budget warnings)"
    )
    provider: str | None = None
    prompt: str | None = Field(None, description="prompt name")
    release: str | None = Field(None, description="release id")
    trace_id: str | None = None
    llm_only: bool = Field(False, description="only spans that describe a model call")

    def to_filter(self) -> queries.SpanFilter:
        return queries.SpanFilter(
            **super().to_filter().model_dump(),
            operation=self.operation,
            provider=self.provider,
            prompt_name=self.prompt,
            release_id=self.release,
            trace_id=self.trace_id,
            llm_only=self.llm_only,
        )


class SummaryQuery(_FilterQuery):
    group_by: list[str] = Field(
        default_factory=list, description="model|feature|user|tenant|provider, day|hour"
    )


async def list_traces(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.TRACES_READ)
    params = parse_query(request, TraceListQuery)
    try:
        page = await DB.read(
            request,
            lambda c: queries.list_traces(
                c,
                principal.project_id,
                params.to_filter(),
                limit=params.limit,
                cursor=params.cursor,
            ),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return json_response(page)


async def list_spans(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.TRACES_READ)
    params = parse_query(request, SpanListQuery)
    try:
        page = await DB.read(
            request,
            lambda c: queries.list_spans(
                c,
                principal.project_id,
                params.to_filter(),
                limit=params.limit,
                cursor=params.cursor,
            ),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return json_response(page)


async def get_trace(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.TRACES_READ)
    trace_id = request.match_info["trace_id"].lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        raise ApiError(400, f"invalid trace id {trace_id!r}: expected 32 hex characters")
    tree = await DB.read(request, lambda c: queries.get_trace(c, principal.project_id, trace_id))
    if tree is None:
        raise ApiError(404, f"trace {trace_id} not found", kind="not_found")
    return json_response(tree)


async def metrics_summary(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.TRACES_READ)
    params = parse_query(request, SummaryQuery)
    now = datetime.now(UTC)
    end_ns = _ns(params.end) or _ns(now)
    start_ns = _ns(params.start) or (end_ns or 0) - 24 * 3600 * 1_000_000_000
    group_by = [g for part in params.group_by for g in part.split(",") if g]
    flt = params.to_filter()
    flt.start_ns = flt.end_ns = None
    has_filters = any(v is not None for v in flt.model_dump().values())
    try:
        summary = await DB.read(
            request,
            lambda c: queries.metrics_summary(
                c,
                principal.project_id,
                start_ns=start_ns or 0,
                end_ns=end_ns or 0,
                group_by=group_by,
                filter=flt if has_filters else None,
            ),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return json_response(summary)


class KeyCreate(BaseModel):
    name: str = Field("default", min_length=1, max_length=200)
    role: Role = Role.WRITE


class KeyOut(BaseModel):
    id: int
    project: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None
    secret: str | None = Field(None, description="the full key: returned once, at creation")


class KeyListOut(BaseModel):
    items: list[KeyOut] = Field(description="the project's keys, revoked ones included")


class RevokedOut(BaseModel):
    revoked: int = Field(description="the id of the key revoked")


async def create_api_key(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.KEYS_MANAGE)
    body = parse_body(await request.read() or b"{}", KeyCreate)
    engine = request.app[STATE].engine
    trail = request_trail(request, principal)

    def work() -> KeyOut:
        with engine.begin() as conn:
            created = key_changes.create(
                conn, principal.project_slug, name=body.name, role=body.role, audit=trail
            )
        k = created.key
        return KeyOut(
            id=k.id,
            project=k.project_slug,
            name=k.name,
            prefix=k.prefix,
            role=k.role,
            created_at=k.created_at,
            secret=created.secret,
        )

    out = await DB.run(work)
    await DB.run(request.app[STATE].keys.reload)
    return json_response(out, 201)


async def list_api_keys(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.KEYS_MANAGE)
    keys = await DB.read(request, lambda c: list_keys(c, principal.project_slug))
    return json_response(
        {
            "items": [
                KeyOut(
                    id=k.id,
                    project=k.project_slug,
                    name=k.name,
                    prefix=k.prefix,
                    role=k.role,
                    created_at=k.created_at,
                    revoked_at=k.revoked_at,
                )
                for k in keys
            ]
        }
    )


async def revoke_api_key(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.KEYS_MANAGE)
    raw_id = request.match_info["key_id"]
    # Ids are 64-bit integers in the database: more digits could only overflow there.
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):
        raise ApiError(400, f"key id must be a whole number of at most 18 digits, got {raw_id!r}")
    key_id = int(raw_id)
    engine = request.app[STATE].engine
    trail = request_trail(request, principal)

    def work() -> bool:
        with engine.begin() as conn:
            return key_changes.revoke(conn, key_id, project=principal.project_slug, audit=trail)

    if not await DB.run(work):
        raise ApiError(404, f"no live key {key_id} in this project", kind="not_found")
    await DB.run(request.app[STATE].keys.reload)
    return json_response({"revoked": key_id})


API_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/api/v1/traces",
        list_traces,
        "List traces, newest first",
        "traces",
        query=TraceListQuery,
        response=queries.TracePage,
        access=needs(Permission.TRACES_READ),
    ),
    ApiRoute(
        "GET",
        "/api/v1/traces/{trace_id}",
        get_trace,
        "One trace as a span tree",
        "traces",
        response=queries.TraceTree,
        access=needs(Permission.TRACES_READ),
    ),
    ApiRoute(
        "GET",
        "/api/v1/spans",
        list_spans,
        "List spans, newest first",
        "traces",
        query=SpanListQuery,
        response=queries.SpanPage,
        access=needs(Permission.TRACES_READ),
    ),
    ApiRoute(
        "GET",
        "/api/v1/metrics/summary",
        metrics_summary,
        "LLM call metrics grouped by model/feature/user/tenant/provider and day/hour",
        "metrics",
        query=SummaryQuery,
        response=queries.MetricsSummary,
        access=needs(Permission.TRACES_READ),
    ),
    ApiRoute(
        "POST",
        "/api/v1/keys",
        create_api_key,
        "Create an API key in the caller's project",
        "keys",
        body=KeyCreate,
        response=KeyOut,
        access=needs(Permission.KEYS_MANAGE),
        success=(201,),
    ),
    ApiRoute(
        "GET",
        "/api/v1/keys",
        list_api_keys,
        "List the project's API keys",
        "keys",
        response=KeyListOut,
        access=needs(Permission.KEYS_MANAGE),
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/keys/{key_id}",
        revoke_api_key,
        "Revoke an API key",
        "keys",
        response=RevokedOut,
        access=needs(Permission.KEYS_MANAGE),
        errors=((404, "no live key with that id in this project"),),
    ),
]
