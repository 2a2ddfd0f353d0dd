"""One name grammar, matched whole, for prompts, labels, datasets, routes, releases, projects and
scorer metrics: a trailing newline, a path, NUL or a leading dot is never a name."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

import bastion
from bastion import names
from bastion.auth import Role, ensure_project
from bastion.evals.scorers import ScorerError, make_scorer
from bastion.prompts import PromptSpec, PromptSpecError, registry
from bastion.prompts.registry_queries import RegistryError
from bastion.releases.model import ReleaseSpec, ReleaseSpecError
from bastion.releases.store import ReleaseError, check_route
from tests.conftest import LiveServer
from tests.prompts.test_prompt_api import call

RULES = [
    names.PROMPT, names.LABEL, names.PROJECT, names.DATASET, names.ROUTE, names.RELEASE,
    names.ENVIRONMENT, names.SCORER,
]  # fmt: skip
HOSTILE = ["abc\n", "\nabc", "../../x", "/etc/passwd", "a\x00b", "a/b", "a\\b", ".x", "..",
           "-x", "_x", "", " x", "x ", "a b", "a\tb", "é", "a:b", "a@b"]  # fmt: skip


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind)
def test_every_kind_refuses_the_same_hostile_values(rule: names.NameRule) -> None:
    for value in HOSTILE:
        assert not rule.is_valid(value), value
        with pytest.raises(names.InvalidName, match=f"invalid {rule.kind}"):
            rule.check(value)
    for value in (None, 3, b"abc"):
        assert not rule.is_valid(value)
    assert rule.check("a1.b_c-d") == "a1.b_c-d"
    assert rule.is_valid("z" * rule.max_length)
    assert not rule.is_valid("z" * (rule.max_length + 1))


def test_kinds_differ_only_in_length_and_case() -> None:
    assert names.ROUTE.is_valid("Checkout")
    assert names.DATASET.is_valid("Golden-2")
    assert not names.PROMPT.is_valid("Summarize")
    assert not names.PROJECT.is_valid("Team")
    assert names.PROMPT.is_valid("9lives")
    assert not names.LABEL.is_valid("9lives")
    assert names.PROMPT.pattern == "[a-z0-9][a-z0-9._-]{0,127}"


def test_a_prompt_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(PromptSpecError, match="name: must match"):
        PromptSpec.from_dict({"name": "abc\n", "text": "hi"})
    with pytest.raises(ReleaseSpecError, match="prompt name"):
        ReleaseSpec.from_dict({"name": "r1", "model": "m", "prompts": {"abc\n": 1}})


def test_the_sdk_refuses_a_trailing_newline_before_any_request(tmp_path: Path) -> None:
    with bastion.Client("http://127.0.0.1:9", "k", cache_dir=tmp_path) as client:
        with pytest.raises(ValueError, match="invalid prompt name"):
            client.prompts.get("support\n")
        with pytest.raises(ValueError, match="invalid label"):
            client.prompts.get("support", label="production\n")
    assert not list(tmp_path.iterdir())


def test_routes_releases_and_scorer_metrics_use_the_grammar() -> None:
    with pytest.raises(ReleaseError, match="route must be"):
        check_route("checkout\n", "production")
    with pytest.raises(ReleaseSpecError, match="name must be"):
        ReleaseSpec.from_dict({"name": "r1\n", "model": "m"})
    with pytest.raises(ScorerError, match="'metric' must be"):
        make_scorer({"type": "contains", "value": "x", "metric": "exact\n"})
    assert make_scorer({"type": "contains", "value": "x", "metric": "Exact.v2"}).name == "Exact.v2"


def test_projects_and_labels_in_the_store(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for bad in ("team\n", "../x", "-team"):
            with pytest.raises(ValueError, match="invalid project name"):
                ensure_project(conn, bad)
        project_id = ensure_project(conn, "team.a")
        spec = PromptSpec.from_dict({"name": "p", "text": "hi"})
        registry.push(conn, project_id, [spec], message="", author="t")
        with pytest.raises(RegistryError, match="invalid label"):
            registry.set_label(conn, project_id, "p", 1, "production\n", actor="t", role=Role.ADMIN)
        registry.set_label(conn, project_id, "p", 1, "staging", actor="t", role=Role.ADMIN)


def test_the_api_refuses_a_prompt_name_with_a_trailing_newline(live_server: LiveServer) -> None:
    status, out = call(live_server, "POST", "/api/v1/prompts",
                       {"prompts": [{"name": "abc\n", "text": "hi"}]})  # fmt: skip
    assert status == 400, out
    assert "name: must match" in out["error"]["message"]
    status, out = call(live_server, "GET", "/api/v1/prompts")
    assert (status, out["items"]) == (200, [])
