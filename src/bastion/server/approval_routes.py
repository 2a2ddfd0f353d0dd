"""The approvals API under ``/api/v1/approvals``: list, show, request, approve, reject.

Requesting needs ``approvals.request`` and creates a pending approval of exactly the change
described (what it would change is kept with it: the prompt or release diff); deciding needs
``approvals.decide`` — a person, never a key — with at least the role the project's policy
names, and never the person who asked (who may only withdraw it, by rejecting). The change
itself then uses the approval (see :mod:`bastion.server.approval_checks`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bastion.approvals import (
    Approval,
    ApprovalError,
    Change,
    Decider,
    Status,
    decide,
    get_approval,
    list_approvals,
    policy_of,
    request_approval,
    ttl_of,
)
from bastion.auth import AuthError, Permission, Principal
from bastion.prompts.registry import RegistryError
from bastion.releases.store import ReleaseError
from bastion.server.approval_changes import ApprovalRequestBody, requested_change
from bastion.server.approval_checks import api_error
from bastion.server.audit_trail import request_trail
from bastion.server.auth import authenticate
from bastion.server.db_work import DbWork
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_body, parse_query
from bastion.server.route_access import needs
from bastion.services.state import STATE
from bastion.settings import ApprovalPolicy

__all__ = ["APPROVAL_ROUTES", "install_approvals"]

_ID = "{approval_id}"


def _error(exc: Exception) -> ApiError:
    if isinstance(exc, ApprovalError):
        return api_error(exc)
    if isinstance(exc, RegistryError):
        return ApiError(exc.status, str(exc), kind=exc.kind)
    if isinstance(exc, ReleaseError):
        return ApiError(exc.status, str(exc))
    return ApiError(400, str(exc))


_db = DbWork((ApprovalError, RegistryError, ReleaseError), _error)

_Reason = Annotated[str | None, Field(None, max_length=2000, description="why")]


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: _Reason = None


class ApprovalOut(BaseModel):
    id: str
    action: str = Field(description="label.move, rollout.start, release.deploy, rollout.promote")
    object: str
    change: dict[str, Any] = Field(description="the change's binding and what it would change")
    change_hash: str = Field(description="the content hash the approval is bound to")
    requested_by: str
    reason: str | None
    status: Status
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None


class ApprovalListOut(BaseModel):
    items: list[ApprovalOut]


class ListQuery(BaseModel):
    status: Status | None = None
    limit: int = Field(100, ge=1, le=500)


def _policy(request: web.Request, principal: Principal) -> ApprovalPolicy:
    return policy_of(request.app[STATE].settings, principal.project_slug)


def _approval_id(request: web.Request) -> str:
    raw = request.match_info["approval_id"]
    if len(raw) != 32 or not all(c in "0123456789abcdef" for c in raw):
        raise ApiError(400, f"invalid approval id {raw[:80]!r}: 32 lower-case hex digits")
    return raw


def _out(approval: Approval, policy: ApprovalPolicy) -> dict[str, Any]:
    return approval.to_dict(datetime.now(UTC), ttl_of(policy))


async def list_(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.APPROVALS_READ)
    q = parse_query(request, ListQuery)
    policy = _policy(request, principal)

    def work(conn: sa.Connection) -> list[Approval]:
        return list_approvals(
            conn, principal.project_id, status=q.status, ttl=ttl_of(policy), limit=q.limit
        )

    found = await _db.read(request, work)
    return json_response({"items": [_out(a, policy) for a in found]})


async def show(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.APPROVALS_READ)
    approval_id = _approval_id(request)
    found = await _db.read(request, lambda c: get_approval(c, principal.project_id, approval_id))
    return json_response(_out(found, _policy(request, principal)))


async def request_(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.APPROVALS_REQUEST)
    body = parse_body(await request.read() or b"{}", ApprovalRequestBody).root
    policy = _policy(request, principal)
    build = await requested_change(request, principal, policy, body)
    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> Approval:
        change: Change = build(conn)
        return request_approval(
            conn,
            principal.project_id,
            change,
            requested_by=principal.actor,
            reason=body.reason,
            ttl=ttl_of(policy),
            audit=trail,
        )

    approval = await _db.write(request, work)
    return json_response(_out(approval, policy), 201)


def _decision(approve: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        principal = await authenticate(request, Permission.APPROVALS_DECIDE)
        if principal.person_role is None:  # the table gives no key this permission
            raise AuthError("approvals are decided by people, not keys", 403)
        decider = Decider(principal.actor, principal.person_role)
        raw = await request.read()
        body = parse_body(raw if raw.strip() else b"{}", DecisionBody)
        policy = _policy(request, principal)
        approval_id = _approval_id(request)
        trail = request_trail(request, principal)

        def work(conn: sa.Connection) -> Approval:
            return decide(
                conn,
                principal.project_id,
                approval_id,
                approve=approve,
                decider=decider,
                policy=policy,
                project=principal.project_slug,
                reason=body.reason,
                audit=trail,
            )

        return json_response(_out(await _db.write(request, work), policy))

    handler.__name__ = "approve" if approve else "reject"
    return handler


_BASE = "/api/v1/approvals"
_NOT_FOUND = ((404, "no such approval in this project"),)
_DECIDE_ERRORS = (*_NOT_FOUND, (409, "the approval is not pending, or the policy changed"))

APPROVAL_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        _BASE,
        list_,
        "The project's approvals, newest first (expired ones shown as such)",
        "approvals",
        query=ListQuery,
        response=ApprovalListOut,
        access=needs(Permission.APPROVALS_READ),
    ),
    ApiRoute(
        "GET",
        f"{_BASE}/{_ID}",
        show,
        "One approval with the change it is bound to and what it would change",
        "approvals",
        response=ApprovalOut,
        errors=_NOT_FOUND,
        access=needs(Permission.APPROVALS_READ),
    ),
    ApiRoute(
        "POST",
        _BASE,
        request_,
        "Request an approval of one change (a protected label move, a deploy, a rollout start "
        "or promotion) the project's policy governs",
        "approvals",
        body=ApprovalRequestBody,
        response=ApprovalOut,
        success=(201,),
        errors=(
            (404, "no such prompt, version, release or route"),
            (409, "the eval gate fails, or an approval of this change is already live"),
        ),
        access=needs(Permission.APPROVALS_REQUEST),
    ),
    *(
        ApiRoute(
            "POST",
            f"{_BASE}/{_ID}/{verb}",
            _decision(verb == "approve"),
            f"{verb.capitalize()} a pending approval (a person with the policy's role, "
            + ("not the one who asked)" if verb == "approve" else "or the one who asked)"),
            "approvals",
            body=DecisionBody,
            response=ApprovalOut,
            errors=_DECIDE_ERRORS,
            access=needs(Permission.APPROVALS_DECIDE),
        )
        for verb in ("approve", "reject")
    ),
]


def install_approvals(app: web.Application) -> None:
    """The approvals API."""
    app.router.add_routes([route.aiohttp() for route in APPROVAL_ROUTES])
