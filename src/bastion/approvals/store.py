"""Approvals in the database: requested, decided (approved or rejected) and used, each in the
caller's transaction together with its audit record.

The row of an approval being decided or used is locked first (``FOR UPDATE`` on PostgreSQL;
on SQLite the write transaction of :func:`bastion.store.transactions.run_write` holds the
database's write lock), so two decisions, or two changes using one approval, queue and the
second finds it decided or used.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.approvals.model import (
    RULES,
    Approval,
    ApprovalAction,
    ApprovalError,
    Change,
    Status,
)
from bastion.audit import AuditTrail
from bastion.auth.roles import PersonRole
from bastion.settings import ApprovalPolicy
from bastion.store.schema import approvals
from bastion.store.storable import storable_text

__all__ = [
    "Decider",
    "consume",
    "decide",
    "get_approval",
    "list_approvals",
    "request_approval",
    "ttl_of",
]

MAX_LIST = 500


@dataclass(frozen=True, slots=True)
class Decider:
    """A person deciding an approval: ``user:<name>`` and their role in the project."""

    actor: str
    role: PersonRole


def _now() -> datetime:
    return datetime.now(UTC)


def ttl_of(policy: ApprovalPolicy) -> timedelta:
    """How long an approval of ``policy``'s project stays usable after it was requested."""
    return timedelta(hours=policy.expires_after_h)


def _approval(row: Any) -> Approval:
    return Approval(
        id=row.id,
        project_id=int(row.project_id),
        action=row.action,
        object=row.object,
        change=orjson.loads(row.change),
        change_hash=row.change_hash,
        requested_by=row.requested_by,
        reason=row.reason,
        status=Status(row.status),
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        decision_reason=row.decision_reason,
        created_at=row.created_at,
        used_at=row.used_at,
    )


def _select(conn: sa.Connection, project_id: int, approval_id: str, *, lock: bool) -> Approval:
    query = sa.select(approvals).where(
        approvals.c.project_id == project_id, approvals.c.id == approval_id
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    if row is None:
        raise ApprovalError(f"no approval {approval_id!r} in this project", 404, "not_found")
    return _approval(row)


def get_approval(conn: sa.Connection, project_id: int, approval_id: str) -> Approval:
    """One approval of the project; :class:`ApprovalError` (404) when there is none."""
    return _select(conn, project_id, approval_id, lock=False)


def list_approvals(
    conn: sa.Connection,
    project_id: int,
    *,
    status: Status | None = None,
    ttl: timedelta,
    limit: int = 100,
) -> list[Approval]:
    """The project's approvals, newest first, optionally those with one effective status."""
    query = sa.select(approvals).where(approvals.c.project_id == project_id)
    if status is Status.EXPIRED or status in (Status.PENDING, Status.APPROVED):
        live = (Status.PENDING.value, Status.APPROVED.value)
        query = query.where(approvals.c.status.in_(live))
    elif status is not None:
        query = query.where(approvals.c.status == status.value)
    query = query.order_by(approvals.c.created_at.desc(), approvals.c.id.desc())
    now = _now()
    found = []
    for row in conn.execute(query):
        approval = _approval(row)
        if status is None or approval.effective_status(now, ttl) is status:
            found.append(approval)
            if len(found) >= min(limit, MAX_LIST):
                break
    return found


def _record(
    conn: sa.Connection,
    audit: AuditTrail,
    verb: str,
    approval: Approval,
    before: Status | None,
    after: Status,
    reason: str | None,
) -> None:
    audit.record(
        conn,
        f"approval.{verb}",
        "approval",
        approval.id,
        project_id=approval.project_id,
        before=None if before is None else {"status": before.value},
        after={"status": after.value, "change_hash": approval.change_hash},
        details={
            "change": approval.action,
            "object": approval.object[:300],
            "change_hash": approval.change_hash,
            "requested_by": approval.requested_by[:300],
        },
        reason=reason,
    )


def request_approval(
    conn: sa.Connection,
    project_id: int,
    change: Change,
    *,
    requested_by: str,
    reason: str | None,
    ttl: timedelta,
    audit: AuditTrail,
) -> Approval:
    """A new pending approval of exactly ``change``. Refused (409) while one for the same
    change is pending or approved and unexpired: decide or use that one."""
    change_hash = change.hash(project_id)
    now = _now()
    rows = conn.execute(
        sa.select(approvals).where(
            approvals.c.project_id == project_id,
            approvals.c.change_hash == change_hash,
            approvals.c.status.in_((Status.PENDING.value, Status.APPROVED.value)),
        )
    ).all()
    for row in rows:
        existing = _approval(row)
        if not existing.expired(now, ttl):
            raise ApprovalError(
                f"approval {existing.id} for exactly this change is already "
                f"{existing.status.value} (asked by {existing.requested_by}): "
                f"{'use' if existing.status is Status.APPROVED else 'decide'} that one"
            )
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "project_id": project_id,
        "action": change.action.value,
        "object": storable_text(change.object, 500),
        "change": change.document(),
        "change_hash": change_hash,
        "requested_by": storable_text(requested_by, 300),
        "reason": None if reason is None else storable_text(reason, 2000),
        "status": Status.PENDING.value,
        "created_at": now,
    }
    conn.execute(approvals.insert().values(**values))
    approval = _select(conn, project_id, values["id"], lock=False)
    _record(conn, audit, "request", approval, None, Status.PENDING, reason)
    return approval


def _check_decider(
    approval: Approval, decider: Decider, policy: ApprovalPolicy, project: str, approve: bool
) -> None:
    rule_name = RULES[ApprovalAction(approval.action)]
    wanted = getattr(policy, rule_name).approver_role
    where = f"projects.{project}.approvals.{rule_name}.approver_role"
    if wanted is None:
        raise ApprovalError(
            f"the policy of project {project!r} does not ask for approval of "
            f"{approval.action} any more ({where} is unset): make the change without one"
        )
    withdrawing = not approve and decider.actor == approval.requested_by
    if approve and decider.actor == approval.requested_by:
        raise ApprovalError(
            f"{decider.actor} asked for this change: a second person must approve it",
            403,
            "permission_error",
        )
    if not withdrawing and decider.role.rank < PersonRole(wanted).rank:
        raise ApprovalError(
            f"deciding on {approval.action} needs the role {wanted!r} or higher in project "
            f"{project!r} ({where}); {decider.actor} has {decider.role.value!r}",
            403,
            "permission_error",
        )


def decide(
    conn: sa.Connection,
    project_id: int,
    approval_id: str,
    *,
    approve: bool,
    decider: Decider,
    policy: ApprovalPolicy,
    project: str,
    reason: str | None,
    audit: AuditTrail,
) -> Approval:
    """Approve (or reject) a pending approval. Refused when it is not pending or expired,
    when the decider asked for the change (approving only: the person who asked may withdraw
    it), or when the decider's role is below the policy's ``approver_role``."""
    approval = _select(conn, project_id, approval_id, lock=True)
    status = approval.effective_status(_now(), ttl_of(policy))
    if status is not Status.PENDING:
        raise ApprovalError(f"approval {approval.id} is {status.value}: it cannot be decided")
    _check_decider(approval, decider, policy, project, approve)
    new = Status.APPROVED if approve else Status.REJECTED
    conn.execute(
        approvals.update()
        .where(approvals.c.project_id == project_id, approvals.c.id == approval.id)
        .values(
            status=new.value,
            decided_by=storable_text(decider.actor, 300),
            decided_at=_now(),
            decision_reason=None if reason is None else storable_text(reason, 2000),
        )
    )
    decided = _select(conn, project_id, approval.id, lock=False)
    _record(conn, audit, "approve" if approve else "reject", decided, Status.PENDING, new, reason)
    return decided


def _describe(action: str, binding: Mapping[str, Any]) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in sorted(binding.items()) if k != "policy")
    return f"{action} ({fields})"


def consume(
    conn: sa.Connection,
    project_id: int,
    approval_id: str,
    change: Change,
    *,
    ttl: timedelta,
    audit: AuditTrail,
) -> Approval:
    """Use approval ``approval_id`` for ``change``, in the change's own transaction: it must
    be approved, unexpired, unused and bound to exactly this change (the same content hash).
    Marked used, so it never serves again."""
    approval = _select(conn, project_id, approval_id, lock=True)
    status = approval.effective_status(_now(), ttl)
    if status is not Status.APPROVED:
        raise ApprovalError(f"approval {approval.id} is {status.value}, not approved")
    if approval.action != change.action.value or approval.change_hash != change.hash(project_id):
        approved = _describe(approval.action, approval.change.get("binding", {}))
        wanted = _describe(change.action, change.binding)
        raise ApprovalError(
            f"approval {approval.id} approves another change: {approved}, not {wanted} (the "
            "change, or what it replaces, differs): request an approval for this one"
        )
    now = _now()
    conn.execute(
        approvals.update()
        .where(approvals.c.project_id == project_id, approvals.c.id == approval.id)
        .values(status=Status.USED.value, used_at=now)
    )
    used = _select(conn, project_id, approval.id, lock=False)
    _record(conn, audit, "use", used, Status.APPROVED, Status.USED, None)
    return used
