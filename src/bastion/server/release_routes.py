"""The releases API: ``/api/v1/releases`` (bundles) and ``/api/v1/routes`` (deploys, rollouts,
history).

Reading needs ``releases.read``; creating releases ``releases.create``; deploying and every
rollout action ``rollouts.manage`` (and an approval to deploy, start or promote when the
project's policy asks for one, see :mod:`bastion.server.approval_checks`). The project is
always the caller's; each change records the caller as its actor, in the route's history and
in the audit log.
Database work runs on worker threads; writes go through ``run_write`` (locking and retries).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, Field

from bastion.approvals import (
    ApprovalAction,
    deploy_change,
    policy_of,
    promote_change,
    rollout_start_change,
)
from bastion.auth import Permission, Principal
from bastion.releases import rollouts, service, store
from bastion.releases.controller import install_controller
from bastion.releases.diff import diff_releases
from bastion.releases.gate import check_gate
from bastion.releases.model import (
    ReleaseSpec,
    ReleaseSpecError,
    RolloutPolicy,
    check_name,
    make_policy,
)
from bastion.server.approval_checks import Guard, rollout_guard
from bastion.server.audit_trail import request_trail
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
from bastion.server.route_access import needs
from bastion.services.state import STATE
from bastion.settings import Settings

__all__ = ["RELEASE_ROUTES", "install_releases"]

_B = TypeVar("_B", bound=BaseModel)
Environment = Literal["staging", "production"]


class CreateBody(BaseModel):
    spec: dict[str, Any] | None = Field(None, description="the release in the YAML file's shape")
    yaml: str | None = Field(None, max_length=1_000_000, description="or the release file's text")


def _approval_field() -> Any:
    return Field(
        None,
        max_length=64,
        description="the id of the approval of exactly this change, when the project's policy "
        "asks for one (projects.<slug>.approvals)",
    )


class DeployBody(BaseModel):
    release: str = Field(min_length=1, max_length=200, description="release id, prefix or name")
    environment: Environment = "production"
    reason: str | None = Field(None, max_length=2000)
    approval: str | None = _approval_field()


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
    approval: str | None = _approval_field()


class ActionBody(BaseModel):
    environment: Environment = "production"
    reason: str | None = Field(None, max_length=2000)
    approval: str | None = _approval_field()


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
    principal = await authenticate(request, Permission.RELEASES_READ)
    items = await _db.read(request, lambda c: store.list_releases(c, principal.project_id))
    return json_response({"items": [i.to_dict() for i in items]})


async def create_release(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.RELEASES_CREATE)
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

    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> tuple[store.ReleaseInfo, bool]:
        return store.create_release(
            conn, principal.project_id, spec, actor=key_actor(conn, principal), audit=trail
        )

    info, created = await _db.write(request, work)
    return json_response({**info.to_dict(), "created": created}, 201 if created else 200)


async def show_release(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.RELEASES_READ)
    ref = request.match_info["release"]
    info = await _db.read(request, lambda c: store.get_release(c, principal.project_id, ref))
    return json_response(info.to_dict())


async def release_diff(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.RELEASES_READ)
    q = parse_query(request, DiffQuery)
    a = request.match_info["release"]
    found = await _db.read(request, lambda c: diff_releases(c, principal.project_id, a, q.b))
    return json_response(found.to_dict())


# -- routes ------------------------------------------------------------------------------------


async def list_routes(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.RELEASES_READ)

    def work(conn: sa.Connection) -> list[dict[str, Any]]:
        return service.route_list(conn, principal.project_id)

    return json_response({"items": await _db.read(request, work)})


async def route_status(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.RELEASES_READ)
    q = parse_query(request, EnvQuery)
    route = _route(request)
    doc = await _db.read(
        request, lambda c: service.route_status(c, principal.project_id, route, q.environment)
    )
    return json_response(doc)


async def route_history(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.RELEASES_READ)
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
    principal = await authenticate(request, Permission.ROLLOUTS_MANAGE)
    body = await _body(request, DeployBody)
    route, env = _route(request), body.environment
    policy = policy_of(request.app[STATE].settings, principal.project_slug)
    hint = {"environment": env, "release": body.release}
    guard = await rollout_guard(
        request, principal, policy, ApprovalAction.RELEASE_DEPLOY,
        route=route, environment=env, candidate_ref=body.release, hint=hint,
    )  # fmt: skip
    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> store.ReleaseInfo:
        before = store.lock_route(conn, principal.project_id, route, env)
        stable = None if before is None else before.release_id
        info = store.deploy(
            conn,
            principal.project_id,
            route,
            env,
            body.release,
            actor=key_actor(conn, principal),
            reason=body.reason,
            audit=trail,
        )
        if info.release_id != stable:
            change = deploy_change(route, env, stable, info.release_id)
            guard.check(conn, change, baseline=stable, approval=body.approval, audit=trail)
        return info

    info = await _db.write(request, work)
    return json_response(
        {"route": route, "environment": body.environment, "stable_release_id": info.release_id}
    )


def rollout_policy(body: RolloutBody) -> RolloutPolicy:
    """The rollout policy ``body`` asks for; a 400 naming what is wrong."""
    try:
        return make_policy(
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


async def start_rollout(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.ROLLOUTS_MANAGE)
    body = await _body(request, RolloutBody)
    route = _route(request)
    settings = request.app[STATE].settings
    policy = rollout_policy(body)
    hint = {"rollout": body.model_dump(exclude={"gate", "reason", "approval"}, exclude_none=True)}
    guard = await rollout_guard(
        request, principal, policy_of(settings, principal.project_slug),
        ApprovalAction.ROLLOUT_START, route=route, environment=body.environment,
        candidate_ref=body.candidate, hint=hint,
    )  # fmt: skip

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

    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> rollouts.Rollout:
        rollout = rollouts.start_rollout(
            conn,
            principal.project_id,
            route,
            body.environment,
            body.candidate,
            policy,
            actor=key_actor(conn, principal),
            gate=evidence,
            reason=reason,
            audit=trail,
        )
        stable = rollout.stable_release_id
        change = rollout_start_change(
            route, rollout.environment, stable, rollout.candidate_release_id, rollout.policy
        )
        guard.check(conn, change, baseline=stable, approval=body.approval, audit=trail)
        return rollout

    rollout = await _db.write(request, work)
    return json_response(rollout.to_dict(), 201)


_ACTIONS: dict[str, Callable[..., Any]] = {
    "promote": rollouts.promote,
    "pause": rollouts.pause,
    "resume": rollouts.resume,
    "abort": rollouts.abort,
    "rollback": rollouts.rollback,
}


async def _promote_guard(
    request: web.Request, principal: Principal, route: str, body: ActionBody
) -> Guard:
    policy = policy_of(request.app[STATE].settings, principal.project_slug)
    return await rollout_guard(
        request, principal, policy, ApprovalAction.ROLLOUT_PROMOTE,
        route=route, environment=body.environment, candidate_ref=None,
        hint={"environment": body.environment},
    )  # fmt: skip


def _action(name: str) -> Callable[[web.Request], Any]:
    act = _ACTIONS[name]
    promote = name == "promote"

    async def handler(request: web.Request) -> web.Response:
        principal = await authenticate(request, Permission.ROLLOUTS_MANAGE)
        body = await _body(request, ActionBody)
        route = _route(request)
        guard = await _promote_guard(request, principal, route, body) if promote else None
        trail = request_trail(request, principal)

        def work(conn: sa.Connection) -> Any:
            done = act(
                conn,
                principal.project_id,
                route,
                body.environment,
                actor=key_actor(conn, principal),
                reason=body.reason,
                audit=trail,
            )
            if guard is not None:
                change = promote_change(done)
                base = done.stable_release_id
                guard.check(conn, change, baseline=base, approval=body.approval, audit=trail)
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
_READ = needs(Permission.RELEASES_READ)
_MANAGE = needs(Permission.ROLLOUTS_MANAGE)

RELEASE_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        _R,
        list_releases,
        "List releases, newest first",
        "releases",
        response=ReleaseListOut,
        access=_READ,
    ),
    ApiRoute(
        "POST",
        _R,
        create_release,
        "Create a release from its spec (201 created, 200 same content exists)",
        "releases",
        body=CreateBody,
        response=CreatedReleaseOut,
        access=needs(Permission.RELEASES_CREATE),
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
        access=_READ,
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
        access=_READ,
    ),
    ApiRoute(
        "GET",
        _ROUTES,
        list_routes,
        "Routes with their stable release and rollout",
        "releases",
        response=RouteListOut,
        access=_READ,
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
        access=_READ,
    ),
    ApiRoute(
        "GET",
        _ROUTES + "/{route}/history",
        route_history,
        "Every deploy, step, promotion and rollback; ?at= what was serving then",
        "releases",
        query=HistoryQuery,
        response=HistoryOut,
        access=_READ,
    ),
    ApiRoute(
        "POST",
        _ROUTES + "/{route}/deploy",
        deploy,
        "Make a release the route's stable release now",
        "releases",
        body=DeployBody,
        response=DeployOut,
        access=_MANAGE,
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
        access=_MANAGE,
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
            access=_MANAGE,
            errors=(*_NOT_FOUND, *_CONFLICT),
        )
        for name in _ACTIONS
    ),
]


def install_releases(app: web.Application, settings: Settings) -> None:
    """The releases API and the rollout analysis controller."""
    app.router.add_routes([route.aiohttp() for route in RELEASE_ROUTES])
    install_controller(app, settings)
