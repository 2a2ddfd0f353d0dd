"""The changes approvals are bound to, built from what the database holds now, with what a
person deciding should see: the prompt diff of a label move, the release diff of a rollout or
deploy (the registry's and the release store's own diffs)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from bastion.approvals.model import ApprovalAction, Change
from bastion.prompts import registry
from bastion.prompts.registry_queries import LabelState, labels_of, prompt_id_of
from bastion.releases.diff import diff_releases
from bastion.releases.model import RolloutPolicy
from bastion.releases.rollouts import Rollout

__all__ = [
    "current_label",
    "deploy_change",
    "label_move_change",
    "promote_change",
    "rollout_start_change",
    "with_release_diff",
]

# A diff kept with an approval is cut here: enough to decide on, bounded in the table.
_MAX_DIFF_CHARS = 200_000


def _cut(text: str) -> str:
    if len(text) <= _MAX_DIFF_CHARS:
        return text
    return text[:_MAX_DIFF_CHARS] + f"\n… (cut at {_MAX_DIFF_CHARS} characters)"


def current_label(conn: sa.Connection, project_id: int, name: str, label: str) -> LabelState | None:
    """The label's state now (version, protected), None when the prompt has no such label.
    Raises the registry's NotFoundError when there is no such prompt."""
    prompt_id = prompt_id_of(conn, project_id, name)
    return next((s for s in labels_of(conn, project_id, prompt_id) if s.label == label), None)


def label_move_change(
    conn: sa.Connection,
    project_id: int,
    name: str,
    label: str,
    from_version: int | None,
    to_version: int,
    *,
    with_diff: bool = False,
) -> Change:
    """Moving ``label`` of prompt ``name`` from ``from_version`` (None: a new label) to
    ``to_version``, bound to the new version's content hash."""
    target = registry.get(conn, project_id, name, version=to_version)
    binding = {
        "prompt": name,
        "label": label,
        "from_version": from_version,
        "to_version": to_version,
        "content_hash": target.content_hash,
    }
    shown: dict[str, Any] = {}
    if with_diff:
        shown["diff"] = (
            _cut(registry.diff(conn, project_id, name, from_version, to_version))
            if from_version is not None
            else None
        )
    return Change(ApprovalAction.LABEL_MOVE, f"{name}:{label}", binding, shown)


def rollout_start_change(
    route: str, environment: str, stable: str, candidate: str, policy: RolloutPolicy
) -> Change:
    """Starting a rollout of ``candidate`` on a route serving ``stable``, under ``policy``."""
    binding = {
        "route": route,
        "environment": environment,
        "stable_release_id": stable,
        "candidate_release_id": candidate,
        "policy": policy.to_dict(),
    }
    return Change(ApprovalAction.ROLLOUT_START, f"{route}@{environment}", binding)


def deploy_change(route: str, environment: str, stable: str | None, release: str) -> Change:
    """Making ``release`` the stable release of a route serving ``stable`` (None: nothing yet)."""
    binding = {
        "route": route,
        "environment": environment,
        "stable_release_id": stable,
        "release_id": release,
    }
    return Change(ApprovalAction.RELEASE_DEPLOY, f"{route}@{environment}", binding)


def promote_change(rollout: Rollout) -> Change:
    """Promoting ``rollout`` by hand: its candidate becomes the stable release now."""
    binding = {
        "route": rollout.route,
        "environment": rollout.environment,
        "rollout_id": rollout.rollout_id,
        "stable_release_id": rollout.stable_release_id,
        "candidate_release_id": rollout.candidate_release_id,
        "policy": rollout.policy.to_dict(),
    }
    return Change(ApprovalAction.ROLLOUT_PROMOTE, f"{rollout.route}@{rollout.environment}", binding)


def with_release_diff(conn: sa.Connection, project_id: int, change: Change) -> Change:
    """``change`` with the release diff from the stable release to the new one to show."""
    binding = change.binding
    new = binding.get("candidate_release_id") or binding.get("release_id")
    old = binding.get("stable_release_id")
    if old is None or new is None:
        return Change(change.action, change.object, binding, {"diff": None})
    diff = diff_releases(conn, project_id, str(old), str(new)).to_dict()
    for prompt in diff["prompts"]:
        prompt["diff"] = _cut(prompt["diff"])
    return Change(change.action, change.object, binding, {"diff": diff})
