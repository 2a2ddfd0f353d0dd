"""The approval policy at the routes that make governed changes: moving a protected label,
deploying, starting and promoting a rollout.

A handler builds a :class:`Guard` before its write transaction — that is when a required eval
gate is checked, on a read connection, against what the change replaces — and calls
:meth:`Guard.check` inside the transaction, after the change, with the change as made: the
gate must have been checked against the same state, and a required approval is used (marked
used) in the same transaction, so a change refused here rolls back whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from bastion.approvals import (
    ApprovalAction,
    ApprovalError,
    Change,
    GateSubject,
    consume,
    current_label,
    evaluate_gate,
    policy_of,
    rule_of,
    rule_path,
    ttl_of,
)
from bastion.audit import AuditTrail
from bastion.auth import AuthError, Permission, Principal
from bastion.prompts.registry import RegistryError
from bastion.releases import rollouts
from bastion.releases import store as release_store
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError
from bastion.services.state import STATE
from bastion.settings import ApprovalPolicy, ApprovalRule

__all__ = [
    "Guard",
    "api_error",
    "label_guard",
    "refuse_protected_label",
    "rollout_guard",
]


def api_error(exc: ApprovalError) -> ApiError:
    return ApiError(exc.status, str(exc), kind=exc.kind)


def refuse_protected_label(principal: Principal, policy: ApprovalPolicy, label: str) -> None:
    """A 403 for moving a label the policy protects without ``labels.move_protected``."""
    if label in policy.protected_labels:
        try:
            principal.require(Permission.LABELS_MOVE_PROTECTED)
        except AuthError as exc:
            raise AuthError(
                f"label {label!r} is protected in project {principal.project_slug!r} "
                f"(projects.{principal.project_slug}.approvals.protected_labels): {exc}",
                403,
            ) from exc


# A gate that was not checked before the transaction (none required, or the change was not
# governed when it was read).
_UNCHECKED = object()


@dataclass(frozen=True, slots=True)
class Guard:
    """The policy of one governed change, with its eval gate already checked against
    ``gate_baseline`` (what the change replaced when it was read)."""

    project_id: int
    project: str
    action: ApprovalAction
    policy: ApprovalPolicy
    what: str  # the object changed, in words: "label 'production' of prompt 'greeting'"
    request_body: dict[str, Any]  # how to ask for the approval: POST /api/v1/approvals
    gate_baseline: object = _UNCHECKED
    gate_evidence: dict[str, Any] | None = None

    @property
    def rule(self) -> ApprovalRule:
        return rule_of(self.policy, self.action)

    def _required(self) -> ApiError:
        where = rule_path(self.project, self.action)
        body = json.dumps({"action": self.action.value, **self.request_body})
        return ApiError(
            409,
            f"{self.action.value} of {self.what} needs an approval under "
            f"{where} (by a second person with the role {self.rule.approver_role!r} or "
            f"higher, never the one who asks): request it with POST /api/v1/approvals {body}, "
            'have it approved, then send this request again with "approval": "<its id>"',
            kind="approval_required",
        )

    def check_gate(self, baseline: object) -> None:
        """A 409 unless a required eval gate was checked against ``baseline``, what the change
        replaces as the transaction finds it."""
        if self.rule.eval_gate.dataset is not None and baseline != self.gate_baseline:
            raise ApiError(
                409,
                f"what {self.action.value} replaces changed while its eval gate was checked "
                "(another change came first): send the request again",
                kind="conflict",
            )

    def check(
        self,
        conn: sa.Connection,
        change: Change,
        *,
        baseline: object,
        approval: str | None,
        audit: AuditTrail,
    ) -> None:
        """In the change's transaction, after it: the gate must have been checked against
        ``baseline`` (what the change replaced), and a required approval is used."""
        rule = self.rule
        self.check_gate(baseline)
        if rule.approver_role is None:
            return
        if approval is None:
            raise self._required()
        try:
            consume(conn, self.project_id, approval, change, ttl=ttl_of(self.policy), audit=audit)
        except ApprovalError as exc:
            raise api_error(exc) from exc


def _gate(
    conn: sa.Connection,
    request: web.Request,
    principal: Principal,
    action: ApprovalAction,
    candidate: GateSubject,
    baseline: GateSubject | None,
) -> dict[str, Any]:
    """The rule's eval gate checked on ``conn``: its evidence, or ApprovalRequired."""
    policy = policy_of(request.app[STATE].settings, principal.project_slug)
    return evaluate_gate(
        conn,
        request.app[STATE].settings,
        principal.project_id,
        rule_of(policy, action).eval_gate,
        candidate=candidate,
        baseline=baseline,
        where=rule_path(principal.project_slug, action),
    )


async def label_guard(
    request: web.Request,
    principal: Principal,
    policy: ApprovalPolicy,
    name: str,
    label: str,
    version: int,
) -> Guard:
    """The guard of moving ``label`` of ``name`` to ``version``; the eval gate checked now
    when the rule requires one and the label is protected (by the policy or the registry)."""
    action = ApprovalAction.LABEL_MOVE
    what = f"label {label!r} of prompt {name!r}"
    hint = {"prompt": name, "label": label, "version": version}
    guard = Guard(principal.project_id, principal.project_slug, action, policy, what, hint)
    rule = rule_of(policy, action)
    if rule.eval_gate.dataset is None:
        return guard

    def read(conn: sa.Connection) -> tuple[object, dict[str, Any] | None]:
        try:
            current = current_label(conn, principal.project_id, name, label)
        except RegistryError:
            return _UNCHECKED, None  # no such prompt: the move itself says so
        if label not in policy.protected_labels and not (current and current.protected):
            return _UNCHECKED, None
        before = None if current is None else current.version
        baseline = None if before is None else GateSubject(prompt=name, version=before)
        candidate = GateSubject(prompt=name, version=version)
        return before, _gate(conn, request, principal, action, candidate, baseline)

    try:
        baseline, evidence = await DB.read(request, read)
    except ApprovalError as exc:
        raise api_error(exc) from exc
    return Guard(
        principal.project_id,
        principal.project_slug,
        action,
        policy,
        what,
        hint,
        baseline,
        evidence,
    )


async def rollout_guard(
    request: web.Request,
    principal: Principal,
    policy: ApprovalPolicy,
    action: ApprovalAction,
    *,
    route: str,
    environment: str,
    candidate_ref: str | None,
    hint: dict[str, Any],
) -> Guard:
    """The guard of a deploy or rollout start of ``candidate_ref``, or of promoting the
    route's rollout (``candidate_ref`` None); the eval gate checked now when required.
    ``hint`` is the rest of the body that requests the approval."""
    what = f"route {route!r} in {environment}"
    hint = {"route": route, **hint}
    guard = Guard(principal.project_id, principal.project_slug, action, policy, what, hint)
    rule = rule_of(policy, action)
    if rule.eval_gate.dataset is None:
        return guard

    def read(conn: sa.Connection) -> tuple[object, dict[str, Any]]:
        pid = principal.project_id
        stable = release_store.get_route(conn, pid, route, environment)
        if candidate_ref is None:
            active = rollouts.active_rollout(conn, pid, route, environment)
            if active is None:
                raise ApiError(409, f"route {route!r} in {environment} has no rollout in progress")
            new = active.candidate_release_id
        else:
            new = release_store.get_release(conn, pid, candidate_ref).release_id
        before = None if stable is None else stable.release_id
        baseline = None if before is None else GateSubject(release_id=before)
        candidate = GateSubject(release_id=new)
        return before, _gate(conn, request, principal, action, candidate, baseline)

    try:
        baseline, evidence = await DB.read(request, read)
    except ApprovalError as exc:
        raise api_error(exc) from exc
    except release_store.ReleaseError as exc:
        raise ApiError(exc.status, str(exc)) from exc
    return Guard(
        principal.project_id,
        principal.project_slug,
        action,
        policy,
        what,
        hint,
        baseline,
        evidence,
    )
