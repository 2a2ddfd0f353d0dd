"""What ``POST /api/v1/approvals`` asks to approve: the body describing one change, checked
against the project's policy (the change must be one it governs; a required eval gate is
checked now) and turned, inside the write transaction, into the exact :class:`Change` the
approval is bound to, with what it would change to show."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from bastion.approvals import (
    ApprovalAction,
    Change,
    current_label,
    deploy_change,
    label_move_change,
    promote_change,
    rollout_start_change,
    rule_of,
    rule_path,
    with_release_diff,
)
from bastion.auth import Principal
from bastion.releases import rollouts
from bastion.releases import store as release_store
from bastion.releases.model import ReleaseSpecError, check_name
from bastion.server.approval_checks import Guard, label_guard, rollout_guard
from bastion.server.openapi import MAX_VERSION, ApiError
from bastion.server.release_routes import Environment, RolloutBody, rollout_policy
from bastion.settings import ApprovalPolicy

__all__ = [
    "ApprovalRequestBody",
    "DeployRequest",
    "LabelMoveRequest",
    "PromoteRequest",
    "RequestedChange",
    "RolloutStartRequest",
    "requested_change",
]

_Reason = Annotated[str | None, Field(None, max_length=2000, description="why")]
_Route = Annotated[str, Field(min_length=1, max_length=200)]


class LabelMoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["label.move"]
    prompt: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1, le=MAX_VERSION, description="the version the label would point at")
    reason: _Reason = None


class RolloutStartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["rollout.start"]
    route: _Route
    rollout: RolloutBody = Field(description="the body the rollout will be started with")
    reason: _Reason = None


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["release.deploy"]
    route: _Route
    environment: Environment = "production"
    release: str = Field(min_length=1, max_length=200, description="release id, prefix or name")
    reason: _Reason = None


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["rollout.promote"]
    route: _Route
    environment: Environment = "production"
    reason: _Reason = None


RequestedChange = LabelMoveRequest | RolloutStartRequest | DeployRequest | PromoteRequest


class ApprovalRequestBody(RootModel[Annotated[RequestedChange, Field(discriminator="action")]]):
    """The change to approve, described as the request that will make it."""


Build = Callable[[sa.Connection], Change]


def _shown(change: Change, guard: Guard) -> Change:
    return Change(
        change.action, change.object, change.binding, {**change.shown, "gate": guard.gate_evidence}
    )


async def _label_move(
    request: web.Request, principal: Principal, policy: ApprovalPolicy, body: LabelMoveRequest
) -> Build:
    name, label, version = body.prompt, body.label, body.version
    guard = await label_guard(request, principal, policy, name, label, version)

    def build(conn: sa.Connection) -> Change:
        current = current_label(conn, principal.project_id, name, label)
        if label not in policy.protected_labels and not (current and current.protected):
            raise ApiError(
                400,
                f"label {label!r} of prompt {name!r} is not protected: moving it needs no approval",
            )
        before = None if current is None else current.version
        if before == version:
            raise ApiError(409, f"label {label!r} of prompt {name!r} already points at {version}")
        guard.check_gate(before)
        change = label_move_change(
            conn, principal.project_id, name, label, before, version, with_diff=True
        )
        return _shown(change, guard)

    return build


def _route_name(route: str) -> str:
    try:
        return check_name(route, "route")
    except ReleaseSpecError as exc:
        raise ApiError(400, f"invalid body: route: {exc}") from exc


def _stable(conn: sa.Connection, project_id: int, route: str, env: str) -> str:
    found = release_store.get_route(conn, project_id, route, env)
    if found is None:
        raise ApiError(409, f"route {route!r} has no stable release in {env}: deploy one first")
    return found.release_id


async def _rollout_start(
    request: web.Request, principal: Principal, policy: ApprovalPolicy, body: RolloutStartRequest
) -> Build:
    route, env, ref = _route_name(body.route), body.rollout.environment, body.rollout.candidate
    rollout_rules = rollout_policy(body.rollout)
    hint = {"rollout": body.rollout.model_dump(exclude={"gate", "reason", "approval"})}
    guard = await rollout_guard(
        request, principal, policy, ApprovalAction.ROLLOUT_START,
        route=route, environment=env, candidate_ref=ref, hint=hint,
    )  # fmt: skip

    def build(conn: sa.Connection) -> Change:
        pid = principal.project_id
        stable = _stable(conn, pid, route, env)
        candidate = release_store.get_release(conn, pid, ref).release_id
        if candidate == stable:
            raise ApiError(409, f"release {candidate} is already the stable release of {route!r}")
        guard.check_gate(stable)
        change = rollout_start_change(route, env, stable, candidate, rollout_rules)
        return _shown(with_release_diff(conn, pid, change), guard)

    return build


async def _deploy(
    request: web.Request, principal: Principal, policy: ApprovalPolicy, body: DeployRequest
) -> Build:
    route, env, ref = _route_name(body.route), body.environment, body.release
    guard = await rollout_guard(
        request, principal, policy, ApprovalAction.RELEASE_DEPLOY,
        route=route, environment=env, candidate_ref=ref,
        hint={"environment": env, "release": ref},
    )  # fmt: skip

    def build(conn: sa.Connection) -> Change:
        pid = principal.project_id
        current = release_store.get_route(conn, pid, route, env)
        stable = None if current is None else current.release_id
        release = release_store.get_release(conn, pid, ref).release_id
        if release == stable:
            raise ApiError(409, f"release {release} is already the stable release of {route!r}")
        guard.check_gate(stable)
        return _shown(
            with_release_diff(conn, pid, deploy_change(route, env, stable, release)), guard
        )

    return build


async def _promote(
    request: web.Request, principal: Principal, policy: ApprovalPolicy, body: PromoteRequest
) -> Build:
    route, env = _route_name(body.route), body.environment
    guard = await rollout_guard(
        request, principal, policy, ApprovalAction.ROLLOUT_PROMOTE,
        route=route, environment=env, candidate_ref=None, hint={"environment": env},
    )  # fmt: skip

    def build(conn: sa.Connection) -> Change:
        pid = principal.project_id
        active = rollouts.active_rollout(conn, pid, route, env)
        if active is None:
            raise ApiError(409, f"route {route!r} in {env} has no rollout in progress")
        guard.check_gate(active.stable_release_id)
        return _shown(with_release_diff(conn, pid, promote_change(active)), guard)

    return build


async def requested_change(
    request: web.Request, principal: Principal, policy: ApprovalPolicy, body: RequestedChange
) -> Build:
    """How to build the change ``body`` asks to approve, inside the write transaction; a 400
    when the project's policy asks no approval for it, a 409 when its eval gate fails."""
    action = ApprovalAction(body.action)
    if rule_of(policy, action).approver_role is None:
        raise ApiError(
            400,
            f"project {principal.project_slug!r} asks no approval for {action.value} "
            f"({rule_path(principal.project_slug, action)}.approver_role is unset): make the "
            "change without one",
        )
    makers: dict[type[Any], Any] = {
        LabelMoveRequest: _label_move,
        RolloutStartRequest: _rollout_start,
        DeployRequest: _deploy,
        PromoteRequest: _promote,
    }
    build: Build = await makers[type(body)](request, principal, policy, body)
    return build
