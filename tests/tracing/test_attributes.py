"""The span contract: every ``bastion.*`` attribute name in the sources is defined in one module."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from bastion.evals.scorers.registry import ENTRY_POINT_GROUP as SCORER_GROUP
from bastion.gateway.tiers import ENTRY_POINT_GROUP as CLASSIFIER_GROUP
from bastion.tracing import attributes

SOURCES = Path(attributes.__file__).resolve().parents[1]
CONTRACT = Path(attributes.__file__).resolve()
NAME = re.compile(r"^bastion\.[a-z_]+(\.[a-z_]+)*$")
# "bastion.…" strings that are not span attributes: plugin groups, file names, an
# instrumentation scope name, and the label of a configuration key in messages.
NOT_ATTRIBUTES = {SCORER_GROUP, CLASSIFIER_GROUP, "bastion.db", "bastion.yaml", "bastion.demo"}
NOT_ATTRIBUTES.add("bastion.judge")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _logger_names(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if called == "getLogger":
                out.update(id(arg) for arg in node.args)
    return out


def attribute_literals(path: Path) -> list[tuple[str, int]]:
    """``bastion.…`` attribute-name literals in ``path`` (f-string pieces included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loggers = _logger_names(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        value = node.value
        if not NAME.match(value) or id(node) in loggers or value in NOT_ATTRIBUTES:
            continue
        if _is_module(value):
            continue
        found.append((value, node.lineno))
    return found


def test_every_bastion_attribute_literal_is_defined_in_the_contract_module() -> None:
    stray = [
        f"{path.relative_to(SOURCES)}:{line}: {value!r}"
        for path in sorted(SOURCES.rglob("*.py"))
        if path != CONTRACT
        for value, line in attribute_literals(path)
    ]
    assert stray == [], "use the constants of bastion.tracing.attributes:\n" + "\n".join(stray)


def test_the_contract_names_are_unique_well_formed_and_exported() -> None:
    defined = {
        name: value
        for name, value in vars(attributes).items()
        if name.isupper() and isinstance(value, str)
    }
    assert sorted(defined) == sorted(attributes.__all__)
    values = list(defined.values())
    assert len(values) == len(set(values))
    assert all(NAME.match(v) for v in values)
    assert {v for v, _ in attribute_literals(CONTRACT)} == set(values)


def test_the_scan_finds_a_stray_literal(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import logging\n"
        "log = logging.getLogger('bastion.gateway')\n"
        "a = {'bastion.new_thing': 1, 'gen_ai.request.model': 2}\n"
        "b = f'bastion.budget.spent_{1}'\n"
        "c = 'bastion.cli.main'\n"
    )
    assert sorted(attribute_literals(sample)) == [
        ("bastion.budget.spent_", 4),
        ("bastion.new_thing", 3),
    ]
