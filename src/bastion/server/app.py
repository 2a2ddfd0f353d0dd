"""ASGI-free application assembly: one aiohttp app for the API, the OTLP receiver and health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bastion.auth import AuthError
from bastion.runtime.background import ThreadWork
from bastion.server import (
    api_routes,
    approval_routes,
    audit_routes,
    auth_routes,
    eval_routes,
    ingest_routes,
    otlp_routes,
    prompt_routes,
    prompt_usage_routes,
    release_routes,
    retention_routes,
    ui_routes,
)
from bastion.server.audit_trail import REQUEST_ID
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError, ApiRoute, json_response, openapi_document, refuse_nul
from bastion.server.route_access import OTHER_ROUTES, Access, project_page_access
from bastion.services.state import STATE, AppState, build_state
from bastion.settings import Settings
from bastion.version import __version__

__all__ = ["access_of", "create_app", "declared_access", "documented_routes"]

# The longest request line and header the server reads (aiohttp's default is 8 KiB).
MAX_URL_BYTES = 64 * 1024

log = logging.getLogger("bastion.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn known errors into JSON bodies naming the problem; give every response a request id."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    request[REQUEST_ID] = request_id  # for the audit records of the changes it makes
    try:
        response = await handler(request)
    except ApiError as exc:
        response = json_response({"error": {"type": exc.kind, "message": str(exc)}}, exc.status)
    except AuthError as exc:
        kind = "authentication_error" if exc.status == 401 else "permission_error"
        response = json_response({"error": {"type": kind, "message": str(exc)}}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text or exc.reason
        response = json_response({"error": {"type": "http_error", "message": message}}, exc.status)
    response.headers.setdefault("x-request-id", request_id)
    return response


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Ready (200) when the database answers and ingestion keeps up; else 503, ``degraded``,
    with the reasons: the database not answering, the spool not draining, or its oldest
    record older than ``ingest.spool_stale_after_s``."""
    state = request.app[STATE]

    database = "ok"
    try:
        await asyncio.wait_for(DB.read(request, lambda conn: conn.execute(sa.text("SELECT 1"))), 5)
    except (TimeoutError, sa.exc.SQLAlchemyError, OSError) as exc:
        database = f"unavailable: {type(exc).__name__}"
    health = state.pipeline.health()
    reasons = ([] if database == "ok" else [f"database {database}"]) + list(health.reasons)
    body = {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "database": database,
        "ingest_queue_spans": state.pipeline.queued_spans,
        "spool": state.pipeline.spool.describe(health.spool),
    }
    return json_response(body, 503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = generate_latest(state.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def documented_routes() -> list[ApiRoute]:
    """Every route of the API document (``/api/v1/openapi.json``)."""
    return [
        *api_routes.API_ROUTES,
        *ingest_routes.INGEST_ROUTES,
        *prompt_routes.PROMPT_ROUTES,
        *prompt_usage_routes.PROMPT_USAGE_ROUTES,
        *eval_routes.EVAL_ROUTES,
        *release_routes.RELEASE_ROUTES,
        *approval_routes.APPROVAL_ROUTES,
        *audit_routes.AUDIT_ROUTES,
        *retention_routes.ERASURE_ROUTES,
        *auth_routes.AUTH_ROUTES,
    ]


def declared_access() -> dict[tuple[str, str], Access]:
    """What every route needs, by method and path: the API routes' own declarations, and
    :data:`~bastion.server.route_access.OTHER_ROUTES` for the rest."""
    declared = {
        (route.method, route.path): route.access
        for route in (*documented_routes(), *auth_routes.SIGN_IN_ROUTES)
    }
    return {**OTHER_ROUTES, **declared}


def access_of(method: str, path: str) -> Access | None:
    """What the route ``method path`` (aiohttp's pattern) needs; None: nothing is declared."""
    return declared_access().get((method, path)) or project_page_access(method, path)


async def openapi(_request: web.Request) -> web.Response:
    return json_response(openapi_document(documented_routes(), version=__version__))


def create_app(
    settings: Settings,
    *,
    state: AppState | None = None,
    api: bool = True,
    gateway: bool = True,
) -> web.Application:
    """Build the application. The database is opened and migrated when the app starts.

    ``api`` serves the read API and the OTLP receiver; ``gateway`` the model gateway. Health,
    readiness and metrics are always served.
    """
    app = web.Application(
        middlewares=[errors_middleware, refuse_nul],
        client_max_size=settings.ingest.max_request_bytes + 1,
        # Bodies are inflated by the OTLP decoder, which caps the inflated size (gzip bombs).
        # A long URL (many filters) reaches the handlers, whose errors are JSON that names the
        # parameter, rather than the HTTP parser's plain-text 400 at 8 KiB.
        handler_args={
            "auto_decompress": False,
            "max_line_size": MAX_URL_BYTES,
            "max_field_size": MAX_URL_BYTES,
        },
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        app_state: AppState = (
            state if state is not None else await loop.run_in_executor(None, build_state, settings)
        )
        app[STATE] = app_state
        app_state.pipeline.start()
        work = ThreadWork()
        refresher = asyncio.create_task(_refresh_keys(app_state, work))
        log.info("bastion ready in %.0f ms", (time.perf_counter() - started) * 1000)
        yield
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await work.drain()  # a key reload still running holds a connection of the engine
        await loop.run_in_executor(None, app_state.close)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if api:
        app.router.add_get("/api/v1/openapi.json", openapi)
        app.router.add_routes(otlp_routes.routes)
        app.router.add_routes([route.aiohttp() for route in api_routes.API_ROUTES])
        app.router.add_routes([route.aiohttp() for route in ingest_routes.INGEST_ROUTES])
        app.router.add_routes([route.aiohttp() for route in prompt_routes.PROMPT_ROUTES])
        app.router.add_routes(
            [route.aiohttp() for route in prompt_usage_routes.PROMPT_USAGE_ROUTES]
        )
        app.router.add_routes([route.aiohttp() for route in eval_routes.EVAL_ROUTES])
        release_routes.install_releases(app, settings)  # API and rollout analysis
        approval_routes.install_approvals(app)  # approvals of the changes a policy governs
        audit_routes.install_audit(app, settings)  # API and audit retention
        retention_routes.install_retention(app, settings)  # erasure API, retention job
        auth_routes.install_auth(app, settings)  # sessions, sign-in, single sign-on
        ui_routes.install_web_ui(app)  # the web UI at /ui/, signed in with the session
    if gateway:
        from bastion.gateway.app import install_gateway

        install_gateway(app, settings)
    return app


async def _refresh_keys(state: AppState, work: ThreadWork) -> None:
    """Reload the key table periodically so revocations take effect within seconds."""
    while True:
        await asyncio.sleep(state.keys.refresh_s)
        try:
            await work.run(state.keys.reload)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not refresh API keys (keeping the cached ones): %s", exc)
