"""The permission table: the README's copy is the code's, every permission is checked by a
route or says where it is exercised instead, and API keys can do exactly what they could when
routes asked for the coarse actions (admin, write, gateway, ingest, read)."""

from __future__ import annotations

from pathlib import Path

from bastion.auth.permissions import (
    NOT_ON_A_ROUTE,
    PERMISSIONS,
    WITHIN_A_ROUTE,
    Permission,
    holds,
)
from bastion.auth.roles import PersonRole, Role
from bastion.server.app import declared_access
from bastion.server.route_access import PROJECT_PAGES, project_page_access

README = Path(__file__).resolve().parents[2] / "README.md"
_COLUMNS = [*PersonRole, *Role]

# What each key role was granted before permissions existed, and the coarse action each route
# of that time asked for. A key's rights on those routes must be exactly what they were.
_OLD_GRANTS = {
    Role.ADMIN: {"admin", "write", "gateway", "ingest", "read"},
    Role.WRITE: {"write", "gateway", "ingest", "read"},
    Role.INGEST: {"ingest"},
    Role.READ: {"read"},
}
_GATEWAY = (
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/models"),
)
_OLD_ROUTES = {
    **{("GET", p): "read" for p in (
        "/api/v1/traces", "/api/v1/traces/{trace_id}", "/api/v1/spans", "/api/v1/metrics/summary",
        "/api/v1/ingest/rejects", "/api/v1/prompts", "/api/v1/prompts/{name}",
        "/api/v1/prompts/{name}/versions", "/api/v1/prompts/{name}/log",
        "/api/v1/prompts/{name}/diff", "/api/v1/prompts/{name}/usage", "/api/v1/evals/datasets",
        "/api/v1/evals/datasets/{name}", "/api/v1/evals/datasets/{name}/versions/{version}",
        "/api/v1/evals/runs", "/api/v1/evals/runs/{run_id}", "/api/v1/evals/compare",
        "/api/v1/releases", "/api/v1/releases/{release}", "/api/v1/releases/{release}/diff",
        "/api/v1/routes", "/api/v1/routes/{route}", "/api/v1/routes/{route}/history",
    )},
    **{("POST", p): "write" for p in (
        "/api/v1/prompts", "/api/v1/prompts/{name}/labels/{label}/rollback",
        "/api/v1/evals/datasets", "/api/v1/evals/datasets/{name}/versions/{version}/lock",
        "/api/v1/evals/datasets/{name}/from-traces", "/api/v1/releases",
        "/api/v1/routes/{route}/deploy", "/api/v1/routes/{route}/rollout",
        "/api/v1/routes/{route}/promote", "/api/v1/routes/{route}/pause",
        "/api/v1/routes/{route}/resume", "/api/v1/routes/{route}/abort",
        "/api/v1/routes/{route}/rollback",
    )},
    ("PUT", "/api/v1/prompts/{name}/labels/{label}"): "write",
    ("POST", "/api/v1/prompts/{name}/labels/{label}/protect"): "admin",
    ("GET", "/api/v1/keys"): "admin",
    ("POST", "/api/v1/keys"): "admin",
    ("DELETE", "/api/v1/keys/{key_id}"): "admin",
    ("GET", "/api/v1/audit"): "admin",
    ("POST", "/api/v1/erasures"): "admin",
    ("POST", "/v1/traces"): "ingest",
    ("POST", "/api/public/otel/v1/traces"): "ingest",
    **dict.fromkeys(_GATEWAY, "gateway"),
}  # fmt: skip


def _readme_table() -> dict[str, tuple[set[str], str]]:
    """The README's table: permission -> (the columns marked, what it allows)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- permissions: the same table as bastion.auth.permissions.PERMISSIONS")
    lines = text[start:].splitlines()[1:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "permission", "owner", "admin", "member", "viewer",
        "admin key", "write key", "ingest key", "read key", "allows",
    ]  # fmt: skip
    rows: dict[str, tuple[set[str], str]] = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        marks = {header[i] for i in range(1, 9) if cells[i] == "✓"}
        assert all(cells[i] in ("", "✓") for i in range(1, 9)), line
        rows[cells[0].strip("`")] = (marks, cells[9])
    return rows


def _column(role: PersonRole | Role) -> str:
    return role.value if isinstance(role, PersonRole) else f"{role.value} key"


def test_the_readme_table_is_the_codes() -> None:
    code = {
        permission.value: (
            {_column(role) for role in _COLUMNS if holds(role, permission)},
            holders.allows,
        )
        for permission, holders in PERMISSIONS.items()
    }
    assert _readme_table() == code


def test_every_permission_is_on_a_route_or_says_where_it_is_exercised() -> None:
    pages = project_page_access("GET", PROJECT_PAGES)
    assert pages is not None
    declared = [*declared_access().values(), pages]
    on_routes = {access.permission for access in declared} - {None}
    assert set(PERMISSIONS) == set(Permission)
    assert on_routes | set(NOT_ON_A_ROUTE) | set(WITHIN_A_ROUTE) == set(Permission)
    assert on_routes & (set(NOT_ON_A_ROUTE) | set(WITHIN_A_ROUTE)) == set()


def test_keys_do_exactly_what_they_did_on_every_route_that_existed() -> None:
    declared = declared_access()
    changed = []
    for route, action in _OLD_ROUTES.items():
        access = declared[route]
        for role in Role:
            before = action in _OLD_GRANTS[role]
            if access.allows(role) != before:
                changed.append(f"{route} for a {role.value} key: {before} -> {not before}")
    assert changed == []


def test_the_roles_hold_what_their_description_says() -> None:
    owner = {p for p in Permission if holds(PersonRole.OWNER, p)}
    admin = {p for p in Permission if holds(PersonRole.ADMIN, p)}
    member = {p for p in Permission if holds(PersonRole.MEMBER, p)}
    viewer = {p for p in Permission if holds(PersonRole.VIEWER, p)}
    assert viewer < member < admin < owner
    assert owner - admin == {Permission.MEMBERS_MANAGE}
    assert all(p.value.endswith((".read", ".view")) for p in viewer)
    for permission in (
        Permission.KEYS_MANAGE, Permission.BUDGETS_MANAGE, Permission.LABELS_MOVE_PROTECTED,
        Permission.ROLLOUTS_MANAGE,
    ):  # fmt: skip
        assert permission in admin - member
    for permission in (
        Permission.PROMPTS_PUSH, Permission.DATASETS_PUSH, Permission.EVALS_RUN,
        Permission.RELEASES_CREATE, Permission.APPROVALS_REQUEST, Permission.LABELS_MOVE,
    ):  # fmt: skip
        assert permission in member - viewer
    assert not any(holds(role, Permission.APPROVALS_DECIDE) for role in Role)
