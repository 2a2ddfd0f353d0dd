"""Every call in the source that changes something audited passes its audit trail.

The domain functions take ``audit=`` optionally (fixtures seed databases without one); this
walk makes sure no API route, command or controller forgets it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "bastion"

# receiver name in the calling module -> the audited functions called through it
AUDITED = {
    "registry": {"push", "set_label", "rollback", "protect_label"},
    "release_store": {"create_release", "deploy"},
    "store": {"create_release", "deploy", "push_dataset", "lock_dataset"},
    "releases": {"create_release", "deploy"},
    "rollouts": {"start_rollout", "promote", "abort", "pause", "resume", "rollback"}
    | {"advance", "fail"},
    "key_changes": {"create", "revoke"},
}
BARE = {"create_key", "revoke_key"}  # the unaudited row changes: only key_changes may call them

_DEMO = "the demo's seed data (its releases go through the audited API)"
# Where a change is knowingly not audited, and why.
NOT_AUDITED = {
    ("cli/demo_loop.py", "registry.push"): _DEMO,
    ("cli/demo_loop.py", "registry.set_label"): _DEMO,
    ("cli/demo_loop.py", "store.push_dataset"): _DEMO,
    ("cli/demo.py", "create_key"): _DEMO,
    ("auth/key_changes.py", "create_key"): "the audited wrapper itself",
    ("auth/key_changes.py", "revoke_key"): "the audited wrapper itself",
    ("evals/redteam/run.py", "store.push_dataset"): "an eval run's own generated dataset",
    ("evals/promptfoo/running.py", "store.push_dataset"): "an eval run's own generated dataset",
}


def _audited_name(node: ast.expr) -> str | None:
    """``receiver.function`` or ``function`` when ``node`` names an audited change."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.attr in AUDITED.get(node.value.id, set()):
            return f"{node.value.id}.{node.attr}"
    elif isinstance(node, ast.Name) and node.id in BARE:
        return node.id
    return None


def _calls() -> list[tuple[str, str, bool]]:
    """(module, change, passes audit=) of every audited change called, or handed to a call
    (``to_thread(store.push_dataset, ...)``), in the source."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            audited = any(k.arg == "audit" for k in node.keywords)
            for target in (node.func, *node.args):
                name = _audited_name(target)
                if name is not None:
                    found.append((module, name, audited and name not in BARE))
    return found


def test_the_walk_finds_the_changes() -> None:
    calls = {(module, name) for module, name, _ in _calls()}
    assert ("server/prompt_routes.py", "registry.push") in calls
    assert ("releases/controller.py", "rollouts.fail") in calls
    assert ("server/api_routes.py", "key_changes.create") in calls


def test_every_change_passes_its_audit_trail() -> None:
    missing = sorted(
        f"{module}: {name}(...) without audit="
        for module, name, passes in _calls()
        if not passes and (module, name) not in NOT_AUDITED
    )
    assert missing == []


def test_the_exceptions_are_current() -> None:
    calls = {(module, name) for module, name, passes in _calls() if not passes}
    assert sorted(set(NOT_AUDITED) - calls) == []
