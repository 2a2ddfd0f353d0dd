"""``bastion eval run -c promptfooconfig.yaml`` end to end: a real simulator and a real gateway
on loopback, the store in the gateway's SQLite file; and a suite stored on SQLite and
PostgreSQL, then compared and gated like any eval run.

The simulator answers ``Reply with: X`` with exactly ``X``, so a config's prompt decides
whether its assertions pass.
"""

from __future__ import annotations

import asyncio
import io
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner, Result

from bastion.auth import ensure_project
from bastion.cli.main import app
from bastion.evals import store
from bastion.evals.compare import compare
from bastion.evals.promptfoo.config import load_suite
from bastion.evals.promptfoo.running import plan_suite, run_suite
from bastion.store.engine import create_engine
from tests.evals.conftest import Stack, gateway_stack, point_cli_at

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
models:
  sim-small: {{deployments: [{{provider: sim, model: sim-small}}]}}
"""

PASSING = """
description: capitals
prompts:
  - "What is the capital of {{ country }}? Reply with: {{ capital }}"
providers:
  - id: openai:chat:sim-small
    config: {temperature: 0, max_tokens: 50}
defaultTest:
  assert:
    - type: not-icontains
      value: sorry
tests:
  - vars: {country: France, capital: Paris}
    assert:
      - type: equals
        value: Paris
      - type: python
        value: "output == context['vars']['capital']"
        metric: exact
  - file://tests.csv
"""

CSV = """country,capital,__expected1,__expected2
Italy,Rome,contains: Rome,not-regex: ^London
Japan,Tokyo,starts-with: Tok,levenshtein(2): Tokio
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(tmp_path_factory.mktemp("promptfoo-home"), CONFIG, seed=5) as stack:
        yield stack


@pytest.fixture
def cli_env(env: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for name in ("PROMPTFOO_PASS_RATE_THRESHOLD", "PROMPTFOO_FAILED_TEST_EXIT_CODE"):
        monkeypatch.delenv(name, raising=False)
    return point_cli_at(env, monkeypatch)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["eval", "run", *args])


def write(folder: Path, config: str, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1) if "_" in name else folder / name).write_text(text)
    path = folder / "promptfooconfig.yaml"
    path.write_text(textwrap.dedent(config))
    return path


def run_ids(result: Result) -> list[str]:
    return [line for line in result.output.split() if len(line) == 32 and line.isalnum()]


def test_a_passing_config_exits_0_and_stores_a_comparable_run(
    cli_env: Stack, tmp_path: Path
) -> None:
    path = write(tmp_path / "ok", PASSING, tests_csv=CSV)
    before = cli_env.sim_requests()
    first = run("-c", str(path))
    assert first.exit_code == 0, first.output
    assert "3/3 tests passed" in first.output
    assert cli_env.sim_requests() - before == 3
    (run_id,) = run_ids(first)

    again = run("-c", str(path))  # the same config: outputs come from the cache
    assert again.exit_code == 0, again.output
    assert cli_env.sim_requests() - before == 3
    (rerun,) = run_ids(again)
    compared = CliRunner().invoke(app, ["eval", "compare", run_id, rerun])
    assert compared.exit_code == 0, compared.output
    assert "test" in compared.output
    gate = CliRunner().invoke(app, ["eval", "gate", "--baseline", run_id, "--candidate", rerun])
    assert gate.exit_code == 0, gate.output


def test_a_failing_config_exits_100_unless_the_pass_rate_threshold_is_met(
    cli_env: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = PASSING.replace("Reply with: {{ capital }}", "Answer briefly.")
    path = write(tmp_path / "bad", broken, tests_csv=CSV)
    failed = run("-c", str(path), "--no-cache")
    assert failed.exit_code == 100, failed.output
    assert "0/3 tests passed" in failed.output
    assert "FAIL" in failed.output

    # One of three tests fails: 66.7% passes a 60% threshold, not a 70% one.
    mixed = PASSING.replace(
        "  - file://tests.csv", "  - vars: {country: Spain, capital: Madrid}\n"
        "    assert: [{type: contains, value: Barcelona}]\n"
        "  - vars: {country: Peru, capital: Lima}\n"
    )  # fmt: skip
    path = write(tmp_path / "mixed", mixed)
    assert run("-c", str(path)).exit_code == 100
    assert run("-c", str(path), "--pass-rate-threshold", "60").exit_code == 0
    monkeypatch.setenv("PROMPTFOO_PASS_RATE_THRESHOLD", "70")
    assert run("-c", str(path)).exit_code == 100
    monkeypatch.setenv("PROMPTFOO_PASS_RATE_THRESHOLD", "60")
    assert run("-c", str(path)).exit_code == 0
    monkeypatch.delenv("PROMPTFOO_PASS_RATE_THRESHOLD")
    monkeypatch.setenv("PROMPTFOO_FAILED_TEST_EXIT_CODE", "3")
    assert run("-c", str(path)).exit_code == 3


def test_judged_assertions_use_the_mapped_grading_models(cli_env: Stack, tmp_path: Path) -> None:
    verdict = json.dumps({"pass": True, "score": 0.9, "reason": "on topic"})
    closed = json.dumps({"pass": True, "reason": "names Paris"})
    fact = json.dumps({"category": "C", "reason": "same answer"})
    config = f"""
    prompts: ["Reply with: Paris"]
    providers: [openai:sim-small]
    tests:
      - assert:
          - type: llm-rubric
            value: 'Names a city. Reply with: {verdict}'
            provider: openai:chat:sim-small
            metric: quality
    """
    graded = (
        config
        + f"""
          - type: model-graded-closedqa
            value: 'Names a city. Reply with: {closed}'
          - type: factuality
            value: 'Paris. Reply with: {fact}'
    defaultTest:
      options: {{provider: openai:chat:sim-small}}
    """
    )
    result = run("-c", str(write(tmp_path / "judged", graded)), "--no-cache")
    assert result.exit_code == 0, result.output
    assert "quality" in result.output
    (run_id,) = run_ids(result)
    with_home = create_engine(f"sqlite:///{cli_env.home / 'bastion.db'}")
    try:
        with with_home.begin() as conn:
            summary = store.get_run(conn, ensure_project(conn), run_id).summary
    finally:
        with_home.dispose()
    assert summary is not None
    metrics = summary["metrics"]
    assert metrics["quality"]["mean"] == 0.9
    assert metrics["model-graded-closedqa"]["pass_rate"] == 1.0
    assert metrics["factuality"]["pass_rate"] == 1.0

    no_judge = config.replace("            provider: openai:chat:sim-small\n", "")
    refused = run("-c", str(write(tmp_path / "nojudge", no_judge)))
    assert refused.exit_code == 2
    assert "needs a grading model" in refused.output
    judged = run("-c", str(write(tmp_path / "nojudge", no_judge)), "--judge-model", "sim-small")
    assert judged.exit_code == 0, judged.output
    # Provider ids the built-in rules do not know are mapped on the command line.
    custom = no_judge.replace("openai:sim-small", "acme:chat-large")
    path = write(tmp_path / "custom", custom)
    unmapped = run("-c", str(path), "--judge-model", "sim-small")
    assert unmapped.exit_code == 2
    assert "unknown provider type 'acme'" in unmapped.output
    mapped = run(
        "-c", str(path), "--judge-model", "sim-small", "--provider-map", "acme:chat-large=sim-small"
    )
    assert mapped.exit_code == 0, mapped.output


def test_an_unreadable_judge_verdict_is_a_test_error(cli_env: Stack, tmp_path: Path) -> None:
    config = """
    prompts: ["Reply with: Paris"]
    providers: [openai:sim-small]
    tests:
      - assert:
          - type: llm-rubric
            value: 'Names a city. Reply with: it looks fine to me'
            provider: openai:chat:sim-small
          - type: contains
            value: Paris
    """
    result = run("-c", str(write(tmp_path / "unjudged", config)), "--no-cache")
    assert result.exit_code == 100, result.output  # not passed
    assert "malformed judge verdict" in result.output
    (run_id,) = run_ids(result)
    with_home = create_engine(f"sqlite:///{cli_env.home / 'bastion.db'}")
    try:
        with with_home.begin() as conn:
            project_id = ensure_project(conn)
            summary = store.get_run(conn, project_id, run_id).summary
            rows = store.load_results(conn, project_id, run_id).rows
    finally:
        with_home.dispose()
    assert summary is not None
    assert summary["promptfoo"] | {"named_metrics": {}} == {
        "passed": 0, "failed": 0, "errors": 1, "pass_rate": 0.0, "named_metrics": {},
    }  # fmt: skip
    assert rows == ()  # an error, not a score of 0


TOOLS = """[{"type": "function", "function": {"name": "get_weather", "parameters":
  {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"""


def test_tool_calls_are_checked_against_the_providers_tools(cli_env: Stack, tmp_path: Path) -> None:
    config = """
    prompts: ["Use get_weather for {{ city }}"]
    providers:
      - id: openai:chat:sim-small
        config: {tools: file://tools.json, tool_choice: required}
    tests:
      - vars: {city: Oslo}
        assert: [{type: is-valid-openai-tools-call}]
    """
    path = write(tmp_path / "tools", config, tools_json=TOOLS)
    result = run("-c", str(path))
    assert result.exit_code == 0, result.output
    before = cli_env.sim_requests()
    again = run("-c", str(path))  # tool calls are not in the output cache: called again
    assert again.exit_code == 0, again.output
    assert cli_env.sim_requests() == before + 1


def test_bad_configs_fail_before_any_call_naming_the_problem(
    cli_env: Stack, tmp_path: Path
) -> None:
    before = cli_env.sim_requests()
    sim = "openai:chat:sim-small"
    cases = [
        (PASSING + "redteam: {purpose: x}\nnunjucksFilters: {}\n",
         ["'nunjucksFilters'", "'redteam'"]),
        (PASSING.replace(sim, "vertex:gemini-pro"), ["unknown provider type 'vertex'"]),
        (PASSING.replace("type: equals", "type: answer-relevance"),
         ["unsupported assertion type 'answer-relevance'"]),
        (PASSING.replace("{{ capital }}", "{{ capital | urlencode }}"),
         ["Nunjucks filter 'urlencode'"]),
        (PASSING.replace("{{ country }}", "{{ continent }}"), ["{{ continent }}"]),
        (PASSING.replace("file://tests.csv", "file://missing.csv"), ["missing.csv"]),
    ]  # fmt: skip
    for index, (config, messages) in enumerate(cases):
        result = run("-c", str(write(tmp_path / f"bad{index}", config, tests_csv=CSV)))
        assert result.exit_code == 2, (index, result.output)
        flat = " ".join(result.output.split())
        for message in messages:
            assert message in flat, (index, message, result.output)
    assert cli_env.sim_requests() == before
    conflict = run("-c", str(write(tmp_path / "ok", PASSING, tests_csv=CSV)), "--model", "x")
    assert conflict.exit_code == 2
    warned = run("-c", str(write(tmp_path / "warn", PASSING + "sharing: false\n", tests_csv=CSV)))
    assert warned.exit_code == 0, warned.output
    assert "ignoring 'sharing'" in " ".join(warned.output.split())


ECHO = """
prompts: ["Say {{ word }}"]
providers: [echo, {id: echo, label: echo-2}]
tests:
  - vars: {word: yes}
    assert: [{type: equals, value: Say yes}]
  - vars: {word: no}
    assert: [{type: contains, value: "{{ word }}"}, {type: contains, value: maybe, weight: 0}]
  - vars: {word: so}
    options: {prefix: "<", suffix: ">"}
    assert: [{type: equals, value: <Say so>, metric: framed}]
"""


def test_a_suite_is_stored_as_eval_runs_on_each_backend(engine: sa.Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    path = write(tmp_path / "echo", ECHO)
    plan = plan_suite(load_suite(path), gateway_url="http://127.0.0.1:9", api_key="")
    first = asyncio.run(
        run_suite(engine, project_id, plan, gateway_url="http://127.0.0.1:9", api_key="")
    )
    assert (first.passed, first.total) == (6, 6)
    assert [t.provider for t in first.targets] == ["echo", "echo-2"]
    second = asyncio.run(
        run_suite(
            engine, project_id, plan_suite(load_suite(path), gateway_url="http://x", api_key=""),
            gateway_url="http://x", api_key="", console=Console(file=io.StringIO()),
        )
    )  # fmt: skip
    with engine.connect() as conn:
        ids = [t.run_id for r in (first, second) for t in r.targets]
        infos = [store.get_run(conn, project_id, run_id) for run_id in ids]
        assert all(i.status == "completed" for i in infos)
        assert infos[0].dataset_hash == infos[1].dataset_hash
        summary = infos[0].summary
        assert summary is not None
        assert summary["promptfoo"]["passed"] == 3
        assert summary["promptfoo"]["named_metrics"] == {"framed": 1.0}
        assert summary["metrics"]["contains"]["n"] == 1
        results = [store.load_results(conn, project_id, i.run_id) for i in infos]
    comparison = compare(results[0], results[1])
    assert {m.metric for m in comparison.metrics} >= {"test", "equals", "contains", "framed"}
    assert not comparison.unpaired_items
