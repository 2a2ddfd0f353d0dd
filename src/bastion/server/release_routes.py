"""The releases API: ``/api/v1/releases`` (bundles) and ``/api/v1/routes`` (deploys, rollouts,
history).

Reading needs the ``read`` role; creating releases, deploying and every rollout action
``write``. The project is always the key's; each change records the key as its actor.
Database work runs on worker threads; writes go through ``run_write`` (locking and retries).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, Field

from bastion.releases import rollouts, service, store
from bastion.releases.controller import install_controller
from bastion.releases.diff import diff_releases
from bastion.releases.gate import check_gate
from bastion.releases.model import ReleaseSpec, ReleaseSpecError, check_name, make_policy
from bastion.server.auth import authenticate
from bastion.server.db_work import DbWork, key_actor
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_body, parse_query
from bastion.server.release_schemas import (
    ActionOut,
    CreatedReleaseOut,
    DeployOut,
    HistoryOut,
    ReleaseDiffOut,
    ReleaseListOut,
    ReleaseOut,
    RolloutOut,
    RouteListOut,
    RouteStatusOut,
)
from bastion.server.state import STATE
from bastion.settings import Settings

__all__ = ["RELEASE_ROUTES", "install_releases"]

_B = TypeVar("_B", bound=BaseModel)
Environment = Literal["staging", "production"]


class CreateBody(BaseModel):
    spec: dict[str, Any] | None = Field(None, description="the release in the YAML file's shape")
    yaml: str | None = Field(None, max_length=1_000_000, description="or the release file's text")


class DeployBody(BaseModel):
    release: str = Field(min_length=1, max_length=200, description="release id, prefix or name")
    environment: Environment = "production"
    reason: str | None = Field(None, max_length=2000)


class RolloutBody(BaseModel):
    candidate: str = Field(min_length=1, max_length=200, description="release id, prefix or name")
    environment: Environment = "production"
    strategy: Literal["canary", "ab", "shadow"] = "canary"
    steps: list[float] | None = Field(None, description="candidate percentages; 100 promotes")
    bake: str | float = Field(60.0, description="bake time per step: 60, '60s', '500ms', '5m'")
    min_requests: int = Field(20, ge=1, le=1_000_000)
    thresholds: dict[str, float] = Field(default_factory=dict)
    split: float = Field(50.0, description="A/B: percent of subjects on the candidate (arm b)")
    quality: dict[str, Any] | None = Field(
        None,
        description='reference-free scorer spec judging sampled answers, e.g. {"type": "is-json"}',
    )
    quality_sample: float = Field(1.0, description="fraction of answers scored (by span id)")
    gate: dict[str, Any] | None = Field(
        None, description="required eval gate: {baseline, candidate} run ids or {report}"
    )
    reason: str | None = Field(None, max_length=2000)


class ActionBody(BaseModel):
    environment: Environment = "production"
    reason: str | None = Field(None, max_length=2000)


class EnvQuery(BaseModel):
    environment: Environment = "production"


class HistoryQuery(BaseModel):
    environment: Environment | None = None
    at: datetime | None = Field(None, description="ISO time: what was serving then")


class DiffQuery(BaseModel):
    b: str = Field(min_length=1, max_length=200, description="the release to compare with")


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, store.ReleaseError):
        kind = {404: "not_found", 409: "conflict"}.get(exc.status, "invalid_request")
        return ApiError(exc.status, str(exc), kind=kind)
    return ApiError(400, str(exc))


_db = DbWork((store.ReleaseError, ReleaseSpecError), _api_error)


async def _body(request: web.Request, model: type[_B]) -> _B:
    raw = await request.read()
    return parse_body(raw if raw.strip() else b"{}", model)


def _route(request: web.Request) -> str:
    route = request.match_info["route"]
    try:
        return check_name(route, "route")
    except ReleaseSpecError as exc:
        raise ApiError(400, str(exc)) from exc


# -- releases ----------------------------------------------------------------------------------


async def list_releases(request: web.Request) -> web.Response:
    principal = await authenticate(request, "read")
    items = await _db.read(request, lambda c: store.list_releases(c, principal.project_id))
    return json_response({"items": [i.to_dict() for i in items]})


async def create_release(request: web.Request) -> web.Response:
    principal = await authenticate(request, "write")
    body = await _body(request, CreateBody)
    if (body.spec is None) == (body.yaml is None):
        raise ApiError(400, "give the release as either spec (JSON) or yaml (text), not both")
    try:
        spec = (
            ReleaseSpec.from_dict(body.spec)
            if body.spec is not None
            else ReleaseSpec.from_yaml(body.yaml or "", limits=request.app[STATE].settings.limits)
        )
    except ReleaseSpecError as exc:
        raise ApiError(400, f"invalid release: {exc}") from exc

    def work(conn: sa.Connection) -> tuple[store.ReleaseInfo, bool]:
        return store.create_release(
            conn, principal.project_id, spec, actor=key_actor(conn, principal)
        )

    info, created = await _db.write(request, work)
    return json_response({**info.to_dict(), "created": created}, 201 if created else 200)


async def show_release(request: web.Request) -> web.Response:
    principal = await authenticate(request, "read")
    ref = request.match_info["release"]
    info = await _db.read(request, lambda c: store.get_release(c, principal.project_id, ref))
    return json_response(info.to_dict())


async def release_diff(request: web.Request) -> web.Response:
    principal = await authenticate(request, "read")
    q = parse_query(request, DiffQuery)
    a = request.match_info["release"]
    found = await _db.read(request, lambda c: diff_releases(c, principal.project_id, a, q.b))
    return json_response(found.to_dict())


# -- routes ------------------------------------------------------------------------------------


async def list_routes(request: web.Request) -> web.Response:
    principal = await authenticate(request, "read")

    def work(conn: sa.Connection) -> list[dict[str, Any]]:
        return service.route_list(conn, principal.project_id)

    return json_response({"items": await _db.read(request, work)})


async def route_status(request: web.Request) -> web.Response:
    principal = await authenticate(request, "read")
    q = parse_query(request, EnvQuery)
    route = _route(request)
    doc = await _db.read(
        request, lambda c: service.route_status(c, principal.project_id, route, q.environment)
    )
    return json_response(doc)


async def route_history(request: web.Request) -> web.Response:
    principal = await authenticate(request, "read")
    q = parse_query(request, HistoryQuery)
    route = _route(request)
    if q.at is not None:
        at = q.at if q.at.tzinfo is not None else q.at.replace(tzinfo=UTC)
        env = q.environment or "production"
        found = await _db.read(
            request, lambda c: store.serving_at(c, principal.project_id, route, env, at)
        )
        return json_response(
            {
                "route": route,
                "environment": env,
                "at": at.isoformat(),
                "serving": found.to_dict() if found is not None else None,
            }
        )
    events = await _db.read(
        request, lambda c: store.history(c, principal.project_id, route, q.environment)
    )
    return json_response({"route": route, "items": [e.to_dict() for e in events]})


async def deploy(request: web.Request) -> web.Response:
    principal = await authenticate(request, "write")
    body = await _body(request, DeployBody)
    route = _route(request)

    def work(conn: sa.Connection) -> store.ReleaseInfo:
        return store.deploy(
            conn,
            principal.project_id,
            route,
            body.environment,
            body.release,
            actor=key_actor(conn, principal),
            reason=body.reason,
        )

    info = await _db.write(request, work)
    return json_response(
        {"route": route, "environment": body.environment, "stable_release_id": info.release_id}
    )


async def start_rollout(request: web.Request) -> web.Response:
    principal = await authenticate(request, "write")
    body = await _body(request, RolloutBody)
    route = _route(request)
    settings = request.app[STATE].settings
    try:
        policy = make_policy(
            strategy=body.strategy,
            steps=body.steps,
            bake=body.bake,
            min_requests=body.min_requests,
            thresholds=body.thresholds,
            split=body.split,
            quality=body.quality,
            quality_sample=body.quality_sample,
        )
    except ReleaseSpecError as exc:
        raise ApiError(400, str(exc)) from exc

    evidence: dict[str, Any] | None = None
    reason = body.reason
    if body.gate is not None:
        # Completed eval runs do not change: compare them on a read connection, not inside
        # the write transaction (and not again on each of its retries).
        gate = body.gate
        evidence = await _db.read(
            request, lambda c: check_gate(c, settings, principal.project_id, gate)
        )
        note = (
            f"eval gate passed (baseline {evidence['baseline_run']}, candidate "
            f"{evidence['candidate_run']})"
        )
        reason = f"{reason}; {note}" if reason else note

    def work(conn: sa.Connection) -> rollouts.Rollout:
        return rollouts.start_rollout(
            conn,
            principal.project_id,
            route,
            body.environment,
            body.candidate,
            policy,
            actor=key_actor(conn, principal),
            gate=evidence,
            reason=reason,
        )

    rollout = await _db.write(request, work)
    return json_response(rollout.to_dict(), 201)


_ACTIONS: dict[str, Callable[..., Any]] = {
    "promote": rollouts.promote,
    "pause": rollouts.pause,
    "resume": rollouts.resume,
    "abort": rollouts.abort,
    "rollback": rollouts.rollback,
}


def _action(name: str) -> Callable[[web.Request], Any]:
    act = _ACTIONS[name]

    async def handler(request: web.Request) -> web.Response:
        principal = await authenticate(request, "write")
        body = await _body(request, ActionBody)
        route = _route(request)

        def work(conn: sa.Connection) -> Any:
            done = act(
                conn,
                principal.project_id,
                route,
                body.environment,
                actor=key_actor(conn, principal),
                reason=body.reason,
            )
            return service.route_status(conn, principal.project_id, route, body.environment) | {
                "action": name,
                "result": done.to_dict() if isinstance(done, rollouts.Rollout) else done,
            }

        return json_response(await _db.write(request, work))

    handler.__name__ = f"{name}_rollout"
    return handler


_R = "/api/v1/releases"
_ROUTES = "/api/v1/routes"
_NOT_FOUND = ((404, "no such release or route in this project"),)
_CONFLICT = ((409, "the route's state does not allow it (see the message)"),)

RELEASE_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET", _R, list_releases, "List releases, newest first", "releases", response=ReleaseListOut
    ),
    ApiRoute(
        "POST",
        _R,
        create_release,
        "Create a release from its spec (201 created, 200 same content exists)",
        "releases",
        body=CreateBody,
        response=CreatedReleaseOut,
        auth="write",
        errors=_NOT_FOUND,
        success=(200, 201),
    ),
    ApiRoute(
        "GET",
        _R + "/{release}",
        show_release,
        "A release by id, prefix or name",
        "releases",
        response=ReleaseOut,
        errors=_NOT_FOUND,
    ),
    ApiRoute(
        "GET",
        _R + "/{release}/diff",
        release_diff,
        "Prompt template and configuration changes from this release to ?b=",
        "releases",
        query=DiffQuery,
        response=ReleaseDiffOut,
        errors=_NOT_FOUND,
    ),
    ApiRoute(
        "GET",
        _ROUTES,
        list_routes,
        "Routes with their stable release and rollout",
        "releases",
        response=RouteListOut,
    ),
    ApiRoute(
        "GET",
        _ROUTES + "/{route}",
        route_status,
        "What serves a route now: stable release, rollout and its latest analysis",
        "releases",
        query=EnvQuery,
        response=RouteStatusOut,
        errors=_NOT_FOUND,
    ),
    ApiRoute(
        "GET",
        _ROUTES + "/{route}/history",
        route_history,
        "Every deploy, step, promotion and rollback; ?at= what was serving then",
        "releases",
        query=HistoryQuery,
        response=HistoryOut,
    ),
    ApiRoute(
        "POST",
        _ROUTES + "/{route}/deploy",
        deploy,
        "Make a release the route's stable release now",
        "releases",
        body=DeployBody,
        response=DeployOut,
        auth="write",
        errors=(*_NOT_FOUND, *_CONFLICT),
    ),
    ApiRoute(
        "POST",
        _ROUTES + "/{route}/rollout",
        start_rollout,
        "Start a canary, A/B or shadow rollout of a candidate release",
        "releases",
        body=RolloutBody,
        response=RolloutOut,
        auth="write",
        errors=(*_NOT_FOUND, *_CONFLICT),
        success=(201,),
    ),
    *(
        ApiRoute(
            "POST",
            _ROUTES + "/{route}/" + name,
            _action(name),
            f"{name.capitalize()} the route's rollout now (audited)",
            "releases",
            body=ActionBody,
            response=ActionOut,
            auth="write",
            errors=(*_NOT_FOUND, *_CONFLICT),
        )
        for name in _ACTIONS
    ),
]


def install_releases(app: web.Application, settings: Settings) -> None:
    """The releases API and the rollout analysis controller."""
    app.router.add_routes([route.aiohttp() for route in RELEASE_ROUTES])
    install_controller(app, settings)
