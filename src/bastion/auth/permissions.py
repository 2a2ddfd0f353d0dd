"""What each role may do: one table from permission to the people roles and key roles that
hold it.

Every route names the permission it needs (``authenticate(request, Permission.X)``); a
person's rights come from their role in the project (owner, admin, member, viewer), a key's
from its role (admin, write, ingest, read), both read from :data:`PERMISSIONS`. The README's
"Roles and approvals" section shows the same table (a test compares them).

Some permissions are held by people only (deciding approvals needs a person, never a key)
and some by keys only (the gateway and the OTLP receiver serve programs, not browsers).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bastion.auth.roles import PersonRole, Role

__all__ = [
    "NOT_ON_A_ROUTE",
    "PERMISSIONS",
    "WITHIN_A_ROUTE",
    "Holders",
    "Permission",
    "holds",
    "permissions_of",
]


class Permission(StrEnum):
    """A named right, checked at the route that exercises it."""

    PROJECT_VIEW = "project.view"
    TRACES_READ = "traces.read"
    SPANS_INGEST = "spans.ingest"
    GATEWAY_CALL = "gateway.call"
    PROMPTS_READ = "prompts.read"
    PROMPTS_PUSH = "prompts.push"
    LABELS_MOVE = "labels.move"
    LABELS_MOVE_PROTECTED = "labels.move_protected"
    LABELS_PROTECT = "labels.protect"
    EVALS_READ = "evals.read"
    DATASETS_PUSH = "datasets.push"
    EVALS_RUN = "evals.run"
    RELEASES_READ = "releases.read"
    RELEASES_CREATE = "releases.create"
    ROLLOUTS_MANAGE = "rollouts.manage"
    BUDGETS_MANAGE = "budgets.manage"
    KEYS_MANAGE = "keys.manage"
    MEMBERS_MANAGE = "members.manage"
    AUDIT_READ = "audit.read"
    ERASURE_RUN = "erasure.run"
    APPROVALS_READ = "approvals.read"
    APPROVALS_REQUEST = "approvals.request"
    APPROVALS_DECIDE = "approvals.decide"
    VIEWS_SAVE = "views.save"


@dataclass(frozen=True, slots=True)
class Holders:
    """Who holds one permission, and what it allows (shown in messages and the README)."""

    people: frozenset[PersonRole]
    keys: frozenset[Role]
    allows: str


_O, _A, _M, _V = PersonRole.OWNER, PersonRole.ADMIN, PersonRole.MEMBER, PersonRole.VIEWER
_K_ADMIN, _K_WRITE, _K_INGEST, _K_READ = Role.ADMIN, Role.WRITE, Role.INGEST, Role.READ


def _h(people: set[PersonRole], keys: set[Role], allows: str) -> Holders:
    return Holders(frozenset(people), frozenset(keys), allows)


_EVERY_PERSON = {_O, _A, _M, _V}
_READ_KEYS = {_K_ADMIN, _K_WRITE, _K_READ}
_CONTRIBUTORS = {_O, _A, _M}
_WRITE_KEYS = {_K_ADMIN, _K_WRITE}
_ADMINS = {_O, _A}

PERMISSIONS: dict[Permission, Holders] = {
    Permission.PROJECT_VIEW: _h(_EVERY_PERSON, set(), "see the project's pages in the web UI"),
    Permission.TRACES_READ: _h(
        _EVERY_PERSON, _READ_KEYS, "read traces, spans, metrics and ingest rejects"
    ),
    Permission.SPANS_INGEST: _h(set(), {_K_ADMIN, _K_WRITE, _K_INGEST}, "send spans (OTLP)"),
    Permission.GATEWAY_CALL: _h(set(), _WRITE_KEYS, "call models through the gateway"),
    Permission.PROMPTS_READ: _h(_EVERY_PERSON, _READ_KEYS, "read prompts, versions, diffs, usage"),
    Permission.PROMPTS_PUSH: _h(_CONTRIBUTORS, _WRITE_KEYS, "push prompt versions"),
    Permission.LABELS_MOVE: _h(_CONTRIBUTORS, _WRITE_KEYS, "move or roll back a label"),
    Permission.LABELS_MOVE_PROTECTED: _h(_ADMINS, {_K_ADMIN}, "move a protected label"),
    Permission.LABELS_PROTECT: _h(_ADMINS, {_K_ADMIN}, "protect or unprotect a label"),
    Permission.EVALS_READ: _h(_EVERY_PERSON, _READ_KEYS, "read datasets, eval runs, comparisons"),
    Permission.DATASETS_PUSH: _h(
        _CONTRIBUTORS, _WRITE_KEYS, "push, lock and build datasets from traces"
    ),
    Permission.EVALS_RUN: _h(_CONTRIBUTORS, _WRITE_KEYS, "run evals"),
    Permission.RELEASES_READ: _h(
        _EVERY_PERSON, _READ_KEYS, "read releases, routes, rollouts, history"
    ),
    Permission.RELEASES_CREATE: _h(_CONTRIBUTORS, _WRITE_KEYS, "create releases"),
    Permission.ROLLOUTS_MANAGE: _h(
        _ADMINS, _WRITE_KEYS, "deploy, start, promote, pause, resume, abort, roll back"
    ),
    Permission.BUDGETS_MANAGE: _h(_ADMINS, {_K_ADMIN}, "change budgets and rate limits"),
    Permission.KEYS_MANAGE: _h(_ADMINS, {_K_ADMIN}, "create, list and revoke API keys"),
    Permission.MEMBERS_MANAGE: _h({_O}, set(), "add people, set their roles, disable them"),
    Permission.AUDIT_READ: _h(_ADMINS, {_K_ADMIN}, "read the audit log"),
    Permission.ERASURE_RUN: _h(_ADMINS, {_K_ADMIN}, "erase a user's, session's or trace's data"),
    Permission.APPROVALS_READ: _h(_EVERY_PERSON, _READ_KEYS, "list and show approvals"),
    Permission.APPROVALS_REQUEST: _h(_CONTRIBUTORS, _WRITE_KEYS, "request an approval"),
    Permission.APPROVALS_DECIDE: _h(
        _CONTRIBUTORS, set(), "approve or reject (the policy may ask for a higher role)"
    ),
    Permission.VIEWS_SAVE: _h(_CONTRIBUTORS, set(), "save and delete views in the web UI"),
}

# Permissions in the table that no route checks, and where the right is exercised instead.
NOT_ON_A_ROUTE: dict[Permission, str] = {
    Permission.EVALS_RUN: "an eval run calls models through the gateway with a key "
    "(gateway.call); no route starts one",
    Permission.BUDGETS_MANAGE: "budgets and rate limits are set in bastion.yaml, read when "
    "the server starts; no route changes them",
    Permission.MEMBERS_MANAGE: "people and their roles are managed with `bastion users` on "
    "the database; no route changes them",
}

# Permissions checked inside a route that needs another one, and when.
WITHIN_A_ROUTE: dict[Permission, str] = {
    Permission.LABELS_MOVE_PROTECTED: "a label move or rollback (labels.move) of a protected label",
}


def holds(role: PersonRole | Role, permission: Permission) -> bool:
    """Whether ``role`` (a person's or a key's) holds ``permission``."""
    holders = PERMISSIONS[permission]
    if isinstance(role, PersonRole):
        return role in holders.people
    return role in holders.keys


def permissions_of(role: PersonRole | Role) -> frozenset[Permission]:
    """Every permission ``role`` holds."""
    return frozenset(p for p in PERMISSIONS if holds(role, p))
