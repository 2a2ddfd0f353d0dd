"""Every call in the source that changes a person, or records a sign-in, passes its audit
trail. The people functions take ``audit=`` optionally (fixtures seed users without one);
this walk makes sure no command, route or sign-in forgets it."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "bastion"
CHANGES = {
    "create_user",
    "set_role",
    "set_disabled",
    "set_password",
    "ensure_first_owner",
    "sign_in_event",
    "start_session",
    "password_login",
    "sso_user",
}


def _calls() -> list[tuple[str, str, bool]]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in CHANGES:
                found.append((module, name, any(k.arg == "audit" for k in node.keywords)))
    return found


def test_the_walk_finds_the_calls() -> None:
    calls = {(module, name) for module, name, _ in _calls()}
    assert ("cli/users.py", "set_role") in calls
    assert ("server/auth_routes.py", "password_login") in calls
    assert ("auth/oidc_users.py", "create_user") in calls


def test_every_change_to_a_person_passes_its_audit_trail() -> None:
    missing = sorted(f"{module}: {name}(...)" for module, name, passes in _calls() if not passes)
    assert missing == []
