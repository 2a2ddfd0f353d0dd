"""The prompt registry API under ``/api/v1/prompts``.

Reading needs ``prompts.read``; pushing ``prompts.push``; moving a label ``labels.move``, a
protected one also ``labels.move_protected`` (and an approval when the project's policy asks
for one, see :mod:`bastion.server.approval_checks`); protecting one ``labels.protect``. The
project is always the caller's. Database work runs on worker threads; writes go through
:func:`bastion.prompts.registry.run_write` (locking and retries).
"""

from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, Field

from bastion.approvals import label_move_change, policy_of
from bastion.auth import Permission
from bastion.parsing import InputError, ValueBudget
from bastion.prompts import PromptSpec, PromptSpecError, registry
from bastion.prompts.template_budget import ProjectLimits
from bastion.server.approval_checks import label_guard, refuse_protected_label
from bastion.server.audit_trail import request_trail
from bastion.server.auth import authenticate
from bastion.server.db_work import DbWork, key_actor
from bastion.server.openapi import (
    MAX_VERSION,
    ApiError,
    ApiRoute,
    json_response,
    parse_body,
    parse_query,
)
from bastion.server.route_access import needs
from bastion.services.state import STATE

__all__ = ["PROMPT_ROUTES"]

_B = TypeVar("_B", bound=BaseModel)


class PushBody(BaseModel):
    prompts: list[dict[str, Any]] = Field(
        min_length=1, description="prompt specs in the .prompt.yaml shape, as JSON"
    )
    message: str = Field("", max_length=10_000, description="what changed and why")
    git_sha: str | None = Field(None, max_length=64, description="the commit the files come from")


class PushOut(BaseModel):
    results: list[registry.PushResult]


class PromptListOut(BaseModel):
    items: list[registry.PromptSummary]


class VersionListOut(BaseModel):
    items: list[registry.PromptVersion]


class GetQuery(BaseModel):
    label: str | None = Field(
        None,
        max_length=64,
        description=f"label to resolve ({registry.DEFAULT_LABEL!r} when neither label nor "
        f"version is given; {registry.LATEST!r} means the newest version)",
    )
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="version number")


class DiffQuery(BaseModel):
    a: str = Field(description="version number or label", min_length=1, max_length=64)
    b: str = Field(description="version number or label", min_length=1, max_length=64)


class DiffOut(BaseModel):
    name: str
    a: str
    b: str
    diff: str = Field(description="unified diff of template and config; empty when equal")


class LabelBody(BaseModel):
    version: int = Field(ge=1, le=MAX_VERSION)
    reason: str | None = Field(None, max_length=2000)
    approval: str | None = Field(
        None,
        max_length=64,
        description="the id of the approval of exactly this move, when the project's policy "
        "asks for one (projects.<slug>.approvals.label_move)",
    )


class RollbackBody(BaseModel):
    reason: str | None = Field(None, max_length=2000)


class ProtectBody(BaseModel):
    protected: bool = Field(True, description="false to remove the protection")
    reason: str | None = Field(None, max_length=2000)


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, registry.RegistryError):
        return ApiError(exc.status, str(exc), kind=exc.kind)
    return ApiError(400, str(exc))


_db = DbWork((registry.RegistryError,), _api_error)


async def _body(request: web.Request, model: type[_B], *, optional: bool = False) -> _B:
    raw = await request.read()
    return parse_body(b"{}" if optional and not raw.strip() else raw, model)


def _name(request: web.Request) -> str:
    return request.match_info["name"]


async def list_prompts(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_READ)
    items = await _db.read(request, lambda c: registry.list_prompts(c, principal.project_id))
    return json_response(PromptListOut(items=items))


async def push_prompts(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_PUSH)
    body = await _body(request, PushBody)
    budget = ValueBudget(request.app[STATE].settings.limits)
    specs: list[PromptSpec] = []
    for i, raw in enumerate(body.prompts):
        try:
            budget.check(raw)
        except InputError as exc:
            raise ApiError(400, f"invalid prompt prompts[{i}]: {exc}") from exc
        try:
            specs.append(PromptSpec.from_dict(raw))
        except PromptSpecError as exc:
            label = raw.get("name") if isinstance(raw.get("name"), str) else f"prompts[{i}]"
            raise ApiError(400, f"invalid prompt {label!r}: {exc}") from exc
    settings = request.app[STATE].settings
    limits = ProjectLimits.from_settings(settings).of(principal.project_slug)
    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> list[registry.PushResult]:
        return registry.push(
            conn,
            principal.project_id,
            specs,
            message=body.message,
            author=key_actor(conn, principal),
            git_sha=body.git_sha,
            limits=limits,
            audit=trail,
        )

    results = await _db.write(request, work)
    changed = any(r.status != "unchanged" for r in results)
    return json_response(PushOut(results=results), 201 if changed else 200)


async def get_prompt(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_READ)
    params = parse_query(request, GetQuery)
    label = params.label
    if label is None and params.version is None:
        label = registry.DEFAULT_LABEL
    found = await _db.read(
        request,
        lambda c: registry.get(
            c, principal.project_id, _name(request), label=label, version=params.version
        ),
    )
    return json_response(found)


async def list_versions(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_READ)
    items = await _db.read(
        request, lambda c: registry.list_versions(c, principal.project_id, _name(request))
    )
    return json_response(VersionListOut(items=items))


async def prompt_log(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_READ)
    found = await _db.read(request, lambda c: registry.log(c, principal.project_id, _name(request)))
    return json_response(found)


async def prompt_diff(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.PROMPTS_READ)
    params = parse_query(request, DiffQuery)
    name = _name(request)
    text = await _db.read(
        request, lambda c: registry.diff(c, principal.project_id, name, params.a, params.b)
    )
    return json_response(DiffOut(name=name, a=params.a, b=params.b, diff=text))


async def set_label(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.LABELS_MOVE)
    body = await _body(request, LabelBody)
    name, label = _name(request), request.match_info["label"]
    policy = policy_of(request.app[STATE].settings, principal.project_slug)
    refuse_protected_label(principal, policy, label)
    guard = await label_guard(request, principal, policy, name, label, body.version)
    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> registry.LabelChange:
        change = registry.set_label(
            conn,
            principal.project_id,
            name,
            body.version,
            label,
            actor=key_actor(conn, principal),
            reason=body.reason,
            role=principal.role,
            audit=trail,
        )
        if change.changed and (change.protected or label in policy.protected_labels):
            moved = label_move_change(
                conn, principal.project_id, name, label, change.from_version, change.to_version
            )
            guard.check(
                conn, moved, baseline=change.from_version, approval=body.approval, audit=trail
            )
        return change

    return json_response(await _db.write(request, work))


async def rollback_label(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.LABELS_MOVE)
    body = await _body(request, RollbackBody, optional=True)
    # A rollback returns a label to the version it held before: it needs the right to move a
    # protected label, never an approval (an incident is not left waiting for a second person).
    policy = policy_of(request.app[STATE].settings, principal.project_slug)
    refuse_protected_label(principal, policy, request.match_info["label"])
    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> registry.LabelChange:
        return registry.rollback(
            conn,
            principal.project_id,
            _name(request),
            request.match_info["label"],
            actor=key_actor(conn, principal),
            reason=body.reason,
            role=principal.role,
            audit=trail,
        )

    return json_response(await _db.write(request, work))


async def protect_label(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.LABELS_PROTECT)
    body = await _body(request, ProtectBody, optional=True)
    trail = request_trail(request, principal)

    def work(conn: sa.Connection) -> registry.LabelChange:
        return registry.protect_label(
            conn,
            principal.project_id,
            _name(request),
            request.match_info["label"],
            actor=key_actor(conn, principal),
            role=principal.role,
            protected=body.protected,
            reason=body.reason,
            audit=trail,
        )

    return json_response(await _db.write(request, work))


_NOT_FOUND = ((404, "no such prompt, version or label in this project"),)
_BASE = "/api/v1/prompts"
_READ = needs(Permission.PROMPTS_READ)

PROMPT_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        _BASE,
        list_prompts,
        "List prompts with their newest version and labels",
        "prompts",
        response=PromptListOut,
        access=_READ,
    ),
    ApiRoute(
        "POST",
        _BASE,
        push_prompts,
        "Push prompt specs: new content becomes new versions (201), known content is unchanged",
        "prompts",
        body=PushBody,
        response=PushOut,
        access=needs(Permission.PROMPTS_PUSH),
        success=(200, 201),
    ),
    ApiRoute(
        "GET",
        _BASE + "/{name}",
        get_prompt,
        "One prompt version (by label, default production, or version) with pinned partials",
        "prompts",
        query=GetQuery,
        response=registry.ResolvedPrompt,
        errors=_NOT_FOUND,
        access=_READ,
    ),
    ApiRoute(
        "GET",
        _BASE + "/{name}/versions",
        list_versions,
        "Versions of a prompt, newest first",
        "prompts",
        response=VersionListOut,
        errors=_NOT_FOUND,
        access=_READ,
    ),
    ApiRoute(
        "GET",
        _BASE + "/{name}/log",
        prompt_log,
        "Versions, labels and the label history of a prompt",
        "prompts",
        response=registry.PromptLog,
        errors=_NOT_FOUND,
        access=_READ,
    ),
    ApiRoute(
        "GET",
        _BASE + "/{name}/diff",
        prompt_diff,
        "Unified diff of two versions or labels",
        "prompts",
        query=DiffQuery,
        response=DiffOut,
        errors=_NOT_FOUND,
        access=_READ,
    ),
    ApiRoute(
        "PUT",
        _BASE + "/{name}/labels/{label}",
        set_label,
        "Point a label at a version (a deploy); a protected label needs labels.move_protected "
        "and, when the project's policy asks, an approval or a passing eval gate",
        "prompts",
        body=LabelBody,
        response=registry.LabelChange,
        access=needs(Permission.LABELS_MOVE),
        errors=(*_NOT_FOUND, (409, "the policy asks for an approval or eval gate it lacks")),
    ),
    ApiRoute(
        "POST",
        _BASE + "/{name}/labels/{label}/rollback",
        rollback_label,
        "Move a label back to where it pointed before its last move",
        "prompts",
        body=RollbackBody,
        response=registry.LabelChange,
        access=needs(Permission.LABELS_MOVE),
        errors=(*_NOT_FOUND, (409, "the label has no previous version")),
    ),
    ApiRoute(
        "POST",
        _BASE + "/{name}/labels/{label}/protect",
        protect_label,
        "Protect (or unprotect) a label: only admin keys may then move it",
        "prompts",
        body=ProtectBody,
        response=registry.LabelChange,
        access=needs(Permission.LABELS_PROTECT),
        errors=_NOT_FOUND,
    ),
]
