"""The audit records of the prompt registry's changes: pushed versions and label moves.

Written by :mod:`bastion.prompts.registry` in the transaction of the change; a record names
the prompt, its versions and content hash, never the template text.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.prompts.registry_queries import LabelChange, PushResult

__all__ = ["record_label_change", "record_push"]

# The registry's label-history action → the audit action.
_LABEL_ACTIONS = {
    "set": "label.move",
    "rollback": "label.rollback",
    "protect": "label.protect",
    "unprotect": "label.unprotect",
}


def record_push(
    conn: sa.Connection, audit: AuditTrail, project_id: int, result: PushResult
) -> None:
    """Record one new version (an unchanged push changes nothing and is not recorded)."""
    if result.status == "unchanged":
        return
    previous = result.previous_version
    audit.record(
        conn,
        "prompt.push",
        "prompt",
        result.name,
        project_id=project_id,
        before=None if previous is None else {"version": previous},
        after={"version": result.version, "content_hash": result.content_hash},
        details={
            "version": result.version,
            "previous_version": previous,
            "content_hash": result.content_hash,
        },
    )


def record_label_change(
    conn: sa.Connection,
    audit: AuditTrail,
    project_id: int,
    change: LabelChange,
    action: str,
    reason: str | None,
) -> None:
    """Record a label move, rollback, protection or unprotection that changed something."""
    if not change.changed:
        return
    was_protected = change.protected if action in ("set", "rollback") else not change.protected
    audit.record(
        conn,
        _LABEL_ACTIONS[action],
        "label",
        f"{change.name}:{change.label}",
        project_id=project_id,
        before=(
            None
            if change.from_version is None
            else {"version": change.from_version, "protected": was_protected}
        ),
        after={"version": change.to_version, "protected": change.protected},
        details={
            "prompt": change.name,
            "label": change.label,
            "from_version": change.from_version,
            "to_version": change.to_version,
            "protected": change.protected,
        },
        reason=reason,
    )
