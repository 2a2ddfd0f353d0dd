"""The server never runs user-supplied code.

promptfoo's ``python`` and ``javascript`` asserts run code from a config file; only the CLI
runs them (``bastion eval run -c``, in :mod:`bastion.evals.promptfoo.sandbox`). These tests pin
that no module the server can load reaches that code, that no scorer plugin points into it,
and that the one API field naming a scorer (a rollout's quality check) refuses them by name.
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import LiveServer
from tests.server.test_otlp_receiver import http

SRC = Path(__file__).resolve().parents[2] / "src"
USER_CODE = "bastion.evals.promptfoo"


def _source(module: str) -> Path | None:
    base = SRC / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Every ``bastion`` module ``module`` imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    closed: set[str] = set()
    for name in found:
        if name.startswith("bastion"):
            parts = name.split(".")
            closed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return closed


def server_closure() -> dict[str, str | None]:
    """Every bastion module the server process can import, each with one importer."""
    seen: dict[str, str | None] = {}
    stack: list[tuple[str, str | None]] = [("bastion.server.app", None)]
    while stack:
        module, parent = stack.pop()
        path = _source(module)
        if module in seen or path is None:
            continue
        seen[module] = parent
        stack.extend((name, module) for name in _imports(module, path))
    return seen


def test_no_module_the_server_loads_reaches_the_sandbox() -> None:
    seen = server_closure()
    assert "bastion.server.eval_routes" in seen  # the walk does follow the routes
    assert "bastion.evals.scorers.registry" in seen  # and the scorers they build
    reaching = []
    for module in seen:
        if module == USER_CODE or module.startswith(USER_CODE + "."):
            chain = [module]
            while (parent := seen[chain[-1]]) is not None:
                chain.append(parent)
            reaching.append(" <- ".join(chain))
    assert not reaching, reaching


def test_the_import_walk_finds_the_sandbox_where_it_is_used() -> None:
    path = _source("bastion.cli.evals")
    assert path is not None
    assert USER_CODE in _imports("bastion.cli.evals", path)


def test_no_scorer_or_classifier_plugin_is_user_code() -> None:
    for group in ("bastion.scorers", "bastion.classifiers"):
        points = entry_points(group=group)
        assert points
        assert not [ep.value for ep in points if ep.value.startswith(USER_CODE)]
        assert not {"python", "javascript"} & {ep.name for ep in points}


def _call(server: LiveServer, method: str, path: str, body: Any) -> tuple[int, Any]:
    status, _, out = http(
        method,
        server.url + path,
        body=orjson.dumps(body),
        headers={**server.headers(), "Content-Type": "application/json"},
    )
    return status, orjson.loads(out)


def test_a_rollout_quality_check_in_user_code_is_refused(live_server: LiveServer) -> None:
    for model in ("m-a", "m-b"):
        status, out = _call(
            live_server, "POST", "/api/v1/releases", {"spec": {"name": model, "model": model}}
        )
        assert status == 201, out
    status, out = _call(live_server, "POST", "/api/v1/routes/r/deploy", {"release": "m-a"})
    assert status == 200, out
    for kind in ("python", "javascript", "not-python"):
        quality = {"type": kind, "value": "import os; os.system('touch /tmp/owned')"}
        status, out = _call(
            live_server,
            "POST",
            "/api/v1/routes/r/rollout",
            {"candidate": "m-b", "quality": quality},
        )
        assert status == 400, out
        message = out["error"]["message"]
        assert "user-supplied code, which the server never does" in message
        assert repr(kind.removeprefix("not-")) in message
