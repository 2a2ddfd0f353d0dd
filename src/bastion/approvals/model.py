"""What an approval is: a change bound by its content hash, who asked, who decided, whether it
was used; and the errors the approval rules answer with.

A change is described by its *binding*: every field that makes it this change and no other
(for a label move the prompt, the label, the version it moves from and to, and the content
hash of the new version). The SHA-256 of the binding's canonical JSON, with the project and
the kind of change, is the approval's ``change_hash``: an approval is used for a change whose
hash is the same, and for nothing else, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bastion.audit import digest
from bastion.store.storable import storable_json

__all__ = [
    "RULES",
    "Approval",
    "ApprovalAction",
    "ApprovalError",
    "ApprovalRequired",
    "Change",
    "Status",
]


class ApprovalAction(StrEnum):
    """The kinds of change an approval policy can govern."""

    LABEL_MOVE = "label.move"
    ROLLOUT_START = "rollout.start"
    RELEASE_DEPLOY = "release.deploy"
    ROLLOUT_PROMOTE = "rollout.promote"
    BUDGET_CHANGE = "budget.change"
    GUARD_CHANGE = "guard.change"


# The rule of ``projects.<slug>.approvals`` that governs each kind of change. A deploy swaps
# the stable release at once, a rollout that skips its steps: the rollout rule governs it.
RULES: dict[ApprovalAction, str] = {
    ApprovalAction.LABEL_MOVE: "label_move",
    ApprovalAction.ROLLOUT_START: "rollout_start",
    ApprovalAction.RELEASE_DEPLOY: "rollout_start",
    ApprovalAction.ROLLOUT_PROMOTE: "rollout_promote",
    ApprovalAction.BUDGET_CHANGE: "budget_change",
    ApprovalAction.GUARD_CHANGE: "guard_change",
}


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    USED = "used"
    EXPIRED = "expired"


class ApprovalError(Exception):
    """An approval cannot be requested, decided or used as asked; the message says why.
    ``status`` is the HTTP status the API answers with, ``kind`` its error type."""

    def __init__(self, message: str, status: int = 409, kind: str = "conflict") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class ApprovalRequired(ApprovalError):
    """The change needs an approval (or a passing eval gate) it does not have."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 409, "approval_required")


@dataclass(frozen=True, slots=True)
class Change:
    """One change exactly: what kind, of which object, bound by ``binding``; ``shown`` is
    what a person deciding should see (a diff), kept with the approval but not hashed."""

    action: ApprovalAction
    object: str
    binding: dict[str, Any]
    shown: dict[str, Any] = field(default_factory=dict)

    def hash(self, project_id: int) -> str:
        """The content hash the approval is bound to: equal only for the same change."""
        return digest({"project_id": project_id, "action": self.action.value, **self.binding})

    def document(self) -> str:
        """What the approval row keeps in ``change``: the binding and what is shown."""
        return storable_json({"binding": self.binding, **self.shown}, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Approval:
    """One stored approval (a row of ``approvals``)."""

    id: str
    project_id: int
    action: str
    object: str
    change: dict[str, Any]
    change_hash: str
    requested_by: str
    reason: str | None
    status: Status
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    created_at: datetime
    used_at: datetime | None

    def expired(self, now: datetime, ttl: timedelta) -> bool:
        """Pending or approved, and not used within ``ttl`` of the request."""
        live = self.status in (Status.PENDING, Status.APPROVED)
        return live and now - self.created_at > ttl

    def effective_status(self, now: datetime, ttl: timedelta) -> Status:
        """The status, or ``expired`` when it ran out unused."""
        return Status.EXPIRED if self.expired(now, ttl) else self.status

    def to_dict(self, now: datetime, ttl: timedelta) -> dict[str, Any]:
        """The approval as JSON (times in RFC 3339), with its effective status."""

        def when(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "action": self.action,
            "object": self.object,
            "change": self.change,
            "change_hash": self.change_hash,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "status": self.effective_status(now, ttl).value,
            "decided_by": self.decided_by,
            "decided_at": when(self.decided_at),
            "decision_reason": self.decision_reason,
            "created_at": when(self.created_at),
            "expires_at": when(self.created_at + ttl),
            "used_at": when(self.used_at),
        }
