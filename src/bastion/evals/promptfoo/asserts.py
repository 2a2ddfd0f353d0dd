"""promptfoo assertions mapped onto Bastion's scorers, and promptfoo's rules for turning
assertion results into a test verdict.

Mapping: ``equals``, ``contains``, ``icontains``, ``contains-any``/``-all``,
``icontains-any``/``-all``, ``regex``, ``starts-with``, ``is-json``, ``contains-json``,
``rouge-n``, ``latency``, ``cost``, ``similar``, ``is-refusal``, ``llm-rubric``,
``model-graded-closedqa``, ``factuality`` and ``is-valid-openai-tools-call`` run the registered
scorers (``bastion.scorers``); ``levenshtein`` keeps promptfoo's meaning (edit distance at most
``threshold``, default 5); ``python`` and ``javascript`` run in :mod:`.sandbox`; ``assert-set``
groups assertions. Every type may be negated with ``not-``. Other types are refused by name.

Aggregation (:func:`grade`), as promptfoo documents it: each assertion gives a pass/fail and a
score; the test score is the weight-averaged score (``weight`` default 1; a weight-0 assertion
always passes and counts for nothing, so it only feeds its ``metric``); the test passes when
every assertion passes or, when the test sets a (non-zero) ``threshold``, when the score
reaches it. Named metrics are the weight-averaged scores of the assertions carrying them.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.evals.datasets import Item
from bastion.evals.promptfoo.loading import (
    Problems,
    PromptfooError,
    expand_paths,
    is_file_ref,
    load_yaml,
    read_data_file,
)
from bastion.evals.promptfoo.templating import render_string
from bastion.evals.scorers.base import Output, Score, Scorer, ScorerError, clamp
from bastion.evals.scorers.deterministic import levenshtein_distance
from bastion.evals.scorers.registry import ScorerContext, make_scorer
from bastion.parsing import InputError
from bastion.prompts import TemplateError

if TYPE_CHECKING:
    from bastion.evals.promptfoo.cases import TestCase
    from bastion.evals.promptfoo.sandbox import ScriptPool, ScriptResult

__all__ = [
    "PROMPT_VAR",
    "SUPPORTED_TYPES",
    "Assertion",
    "BuildContext",
    "Runtime",
    "TestGrade",
    "Verdict",
    "build_assertions",
    "grade",
]

PROMPT_VAR = "__prompt__"  # the rendered prompt, as the judges' question
ASSERT_KEYS = frozenset({"type", "value", "threshold", "weight", "metric", "provider", "config"})
SET_KEYS = frozenset({"type", "assert", "threshold", "weight", "metric", "config"})
# promptfoo type -> (registered scorer type, fixed extra spec keys)
_SCORERS: dict[str, tuple[str, dict[str, Any]]] = {
    "equals": ("equals", {"strip": False}),
    "contains": ("contains", {}),
    "icontains": ("icontains", {}),
    "contains-any": ("contains-any", {}),
    "contains-all": ("contains-all", {}),
    "icontains-any": ("contains-any", {"ignore_case": True}),
    "icontains-all": ("contains-all", {"ignore_case": True}),
    "regex": ("regex", {}),
    "starts-with": ("starts-with", {}),
    "is-json": ("is-json", {}),
    "contains-json": ("contains-json", {}),
    "rouge-n": ("rouge-n", {}),
    "latency": ("latency", {}),
    "cost": ("cost", {}),
    "similar": ("similar", {}),
    "is-refusal": ("refusal", {}),
    "llm-rubric": ("llm-rubric", {}),
    "model-graded-closedqa": ("model-graded-closedqa", {}),
    "factuality": ("factuality", {}),
    "model-graded-factuality": ("factuality", {}),
    "is-valid-openai-tools-call": ("valid-tool-call", {}),
    "is-valid-openai-function-call": ("valid-tool-call", {}),
    "is-valid-function-call": ("valid-tool-call", {}),
}
_JUDGED = frozenset(
    {"llm-rubric", "model-graded-closedqa", "factuality", "model-graded-factuality"}
)
_NEEDS_VALUE = frozenset(
    {"equals", "contains", "icontains", "contains-any", "contains-all", "icontains-any",
     "icontains-all", "regex", "starts-with", "rouge-n", "similar", "llm-rubric",
     "model-graded-closedqa", "factuality", "model-graded-factuality", "levenshtein",
     "python", "javascript"}
)  # fmt: skip
_NEEDS_THRESHOLD = frozenset({"latency", "cost"})
_UNIT_DEFAULTS = {"similar": 0.8, "rouge-n": 0.75}
SUPPORTED_TYPES = frozenset({*_SCORERS, "levenshtein", "python", "javascript", "assert-set"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """One assertion's result: ``score`` is the raw score (code may return any number)."""

    passed: bool
    score: float
    reason: str


@dataclass
class Runtime:
    """What assertions need while the run goes: the script pools (started on demand)."""

    python: ScriptPool | None = None
    javascript: ScriptPool | None = None


@dataclass(frozen=True, slots=True)
class Subject:
    """What is being judged: the output, the test's vars and the rendered prompt."""

    output: Output
    vars: Mapping[str, Any]
    prompt: str
    test: TestCase
    provider_id: str

    def item(self) -> Item:
        return Item(
            id=f"t{self.test.index}", vars={**self.vars, PROMPT_VAR: self.prompt}, expected=None
        )


Evaluate = Callable[[Subject, Runtime], Awaitable[Verdict]]


@dataclass(frozen=True, slots=True)
class Assertion:
    """A built assertion: its type as written, metric, weight and how to evaluate it."""

    type: str
    metric: str | None
    weight: float
    evaluate: Evaluate = field(repr=False)
    spec: Mapping[str, Any] = field(default_factory=dict, repr=False)
    scorer: Scorer | None = field(default=None, repr=False)  # when a registered scorer runs it


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What building needs: the config's folder, the provider's tools, the judge."""

    base: Path
    scorer_context: ScorerContext
    judge_models: Mapping[str, str]  # provider id -> gateway alias, for assertion `provider`
    default_judge: str | None
    embedder_for: Callable[[str], Callable[[list[str]], list[list[float]]]] | None = None
    node_available: bool = True


@dataclass(frozen=True, slots=True)
class TestGrade:
    """A test's verdict: pass/fail, weighted score, the first failure's reason, the
    components and the named metrics (``metric -> (score, passed)``)."""

    __test__ = False

    passed: bool
    score: float
    reason: str
    components: tuple[tuple[Assertion, Verdict], ...]
    named: Mapping[str, tuple[float, bool]]


# -- aggregation --------------------------------------------------------------------------------


def grade(components: Sequence[tuple[Assertion, Verdict]], threshold: float | None) -> TestGrade:
    """promptfoo's aggregation (see the module doc)."""
    if not components:
        return TestGrade(True, 1.0, "no assertions", (), {})
    total = 0.0
    weights = 0.0
    failure: str | None = None
    by_metric: dict[str, list[tuple[float, float, bool]]] = {}
    for assertion, verdict in components:
        weight = assertion.weight
        passed = verdict.passed or weight == 0
        total += verdict.score * weight
        weights += weight
        if not passed and failure is None:
            failure = f"{assertion.type}: {verdict.reason}"
        if assertion.metric:
            by_metric.setdefault(assertion.metric, []).append((verdict.score, weight, passed))
    score = total / weights if weights > 0 else 0.0
    passed = failure is None
    reason = failure or "all assertions passed"
    if threshold:  # promptfoo ignores a zero threshold
        passed = score >= threshold
        reason = f"aggregate score {score:.2f} {'≥' if passed else '<'} threshold {threshold:g}"
        if failure is not None and passed:
            reason += f" (despite {failure})"
    named: dict[str, tuple[float, bool]] = {}
    for metric, parts in by_metric.items():
        weight_sum = sum(w for _, w, _ in parts)
        if weight_sum > 0:
            value = sum(s * w for s, w, _ in parts) / weight_sum
        else:
            value = sum(s for s, _, _ in parts) / len(parts)
        named[metric] = (value, all(p for _, _, p in parts))
    return TestGrade(passed, score, reason, tuple(components), named)


# -- building -----------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _render(value: Any, variables: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render_string(value, variables)
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    if isinstance(value, Mapping):
        return {k: _render(v, variables) for k, v in value.items()}
    return value


def _schema_value(value: Any, base: Path) -> Any:
    """is-json / contains-json take a schema as an object, a JSON/YAML string or a file."""
    if is_file_ref(value):
        return read_data_file(expand_paths(value, base)[0])
    if isinstance(value, str):
        try:
            return load_yaml(value)
        except InputError as exc:
            raise PromptfooError(f"the schema is not JSON or YAML: {exc}") from None
    return value


def _from_score(score: Score) -> Verdict:
    return Verdict(score.passed, score.value, score.reason)


def _scorer_evaluate(scorer: Scorer) -> Evaluate:
    async def evaluate(subject: Subject, runtime: Runtime) -> Verdict:
        return _from_score(await scorer.score(subject.output, subject.item()))

    return evaluate


def _levenshtein(value: str, threshold: float, negate: bool) -> Evaluate:
    async def evaluate(subject: Subject, runtime: Runtime) -> Verdict:
        distance = levenshtein_distance(subject.output.text, value)
        ok = distance <= threshold
        reason = f"Levenshtein distance {distance} {'≤' if ok else '>'} {threshold:g}"
        if negate:
            ok = not ok
        return Verdict(ok, 1.0 if ok else 0.0, reason)

    return evaluate


def _code_verdict(result: ScriptResult, threshold: float | None, negate: bool) -> Verdict:
    if not result.ok:
        return Verdict(False, 0.0, result.error or "the assertion failed")
    value = result.value
    reason = "the assertion returned "
    if isinstance(value, bool):
        passed, score, reason = value, 1.0 if value else 0.0, reason + str(value).lower()
    elif _number(value):
        score = float(value)
        passed = score >= threshold if threshold is not None else score > 0
        reason += f"{score:g}"
    elif isinstance(value, Mapping) and ("pass" in value or "pass_" in value):
        passed = bool(value.get("pass", value.get("pass_")))
        raw = value.get("score")
        score = float(raw) if isinstance(raw, int | float) and _number(raw) else float(passed)
        reason = str(value.get("reason") or f"the assertion returned pass={passed}")
    else:
        shown = repr(value)[:200]
        return Verdict(
            False, 0.0, f"the assertion returned {shown}: expected a bool, a number or "
            "{pass, score, reason}",
        )  # fmt: skip
    if negate:
        return Verdict(not passed, 1.0 - clamp(score), f"(negated) {reason}")
    return Verdict(passed, score, reason)


def _code(language: str, value: str, spec: Mapping[str, Any], base: Path, negate: bool) -> Evaluate:
    path: str | None = None
    function: str | None = None
    code: str | None = value
    if is_file_ref(value):
        reference, _, function_name = (
            value.rpartition(":") if re.search(r":[\w$]+$", value[7:]) else (value, "", "")
        )
        path = str(expand_paths(reference, base)[0])
        function = function_name or None
        code = None
    threshold = spec.get("threshold")
    config = spec.get("config") or {}

    async def evaluate(subject: Subject, runtime: Runtime) -> Verdict:
        pool = runtime.python if language == "python" else runtime.javascript
        if pool is None:  # pragma: no cover - the runner starts the pools it planned
            return Verdict(False, 0.0, f"no {language} worker")
        context = {
            "prompt": subject.prompt,
            "vars": dict(subject.vars),
            "test": {
                "description": subject.test.description,
                "vars": dict(subject.vars),
                "metadata": dict(subject.test.metadata),
            },
            "config": dict(config),
            "provider": {"id": subject.provider_id},
            "providerResponse": {"output": subject.output.text},
        }
        result = await pool.run(
            output=subject.output.text, context=context, code=code, path=path, function=function
        )
        return _code_verdict(result, threshold if _number(threshold) else None, negate)

    return evaluate


def _assert_set(children: Sequence[Assertion], threshold: float | None) -> Evaluate:
    async def evaluate(subject: Subject, runtime: Runtime) -> Verdict:
        verdicts = [await child.evaluate(subject, runtime) for child in children]
        result = grade(list(zip(children, verdicts, strict=True)), threshold)
        return Verdict(result.passed, result.score, result.reason)

    return evaluate


def _judge_model(
    raw: Mapping[str, Any], test: TestCase, build: BuildContext, where: str, problems: Problems
) -> str | None:
    provider = raw.get("provider", test.options.get("provider"))
    if isinstance(provider, Mapping) and isinstance(provider.get("text"), Mapping | str):
        provider = provider["text"]  # promptfoo's {text: ..., embedding: ...} form
    if isinstance(provider, Mapping):
        provider = provider.get("id")
    if provider is None:
        if build.default_judge is None:
            problems.error(
                f"{where}: {raw['type']} needs a grading model: set the assertion's 'provider', "
                "defaultTest.options.provider, bastion.judge or --judge-model"
            )
        return build.default_judge
    if not isinstance(provider, str):
        problems.error(f"{where}.provider: must be a provider id")
        return None
    if provider in build.judge_models:
        return build.judge_models[provider]
    from bastion.evals.promptfoo.config import map_provider_id

    return map_provider_id(provider, build.judge_models, problems, f"{where}.provider")


@dataclass(frozen=True, slots=True)
class _Head:
    """The keys every assertion shares, checked."""

    kind: str
    base_type: str
    negate: bool
    weight: float
    metric: str | None
    threshold: float | None


def _head(raw: Any, where: str, problems: Problems) -> _Head | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        problems.error(f"{where}: an assertion must be a mapping with a 'type'")
        return None
    kind = raw["type"].strip()
    negate = kind.startswith("not-")
    base_type = kind[4:] if negate else kind
    if base_type not in SUPPORTED_TYPES:
        problems.error(f"{where}: unsupported assertion type {kind!r}")
        return None
    allowed = SET_KEYS if base_type == "assert-set" else ASSERT_KEYS
    problems.unknown_keys(where, raw, allowed)
    weight = raw.get("weight", 1)
    if not _number(weight) or weight < 0:
        problems.error(f"{where}.weight: must be a non-negative number, got {weight!r}")
        return None
    metric = raw.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        problems.error(f"{where}.metric: must be a non-empty string")
        return None
    threshold = raw.get("threshold")
    if threshold is not None and not _number(threshold):
        problems.error(f"{where}.threshold: must be a number, got {threshold!r}")
        return None
    limit = float(threshold) if threshold is not None else None
    return _Head(kind, base_type, negate, float(weight), metric, limit)


def _build_one(
    raw: Any, test: TestCase, build: BuildContext, where: str, problems: Problems
) -> Assertion | None:
    head = _head(raw, where, problems)
    if head is None:
        return None
    kind, base_type = head.kind, head.base_type
    if base_type == "assert-set":
        return _build_set(raw, head, test, build, where, problems)
    if base_type in _NEEDS_VALUE and raw.get("value") is None:
        problems.error(f"{where}: {kind} needs a 'value'")
        return None
    if base_type in _NEEDS_THRESHOLD and head.threshold is None:
        problems.error(f"{where}: {kind} needs a 'threshold'")
        return None
    if "provider" in raw and base_type not in _JUDGED and base_type != "similar":
        problems.error(f"{where}.provider: {kind} does not use a provider")
        return None
    try:
        if base_type in {"python", "javascript"}:
            return _build_code(raw, head, build, where, problems)
        value = _render(raw.get("value"), test.vars)
        if base_type == "levenshtein":
            limit = head.threshold if head.threshold is not None else 5.0
            evaluate = _levenshtein(str(value), limit, head.negate)
            return Assertion(kind, head.metric, head.weight, evaluate, dict(raw))
        return _build_scored(raw, head, value, test, build, where, problems)
    except (ScorerError, PromptfooError, TemplateError) as exc:
        problems.error(f"{where}: {exc}")
        return None


def _build_set(
    raw: Mapping[str, Any],
    head: _Head,
    test: TestCase,
    build: BuildContext,
    where: str,
    problems: Problems,
) -> Assertion | None:
    if head.negate:
        problems.error(f"{where}: 'not-assert-set' is not supported")
        return None
    children_raw = raw.get("assert")
    if not isinstance(children_raw, list) or not children_raw:
        problems.error(f"{where}.assert: an assert-set needs a list of assertions")
        return None
    children = [
        _build_one(c, test, build, f"{where}.assert[{i}]", problems)
        for i, c in enumerate(children_raw)
    ]
    if any(c is None for c in children):
        return None
    built = [c for c in children if c is not None]
    evaluate = _assert_set(built, head.threshold)
    return Assertion(head.kind, head.metric, head.weight, evaluate, dict(raw))


def _build_code(
    raw: Mapping[str, Any], head: _Head, build: BuildContext, where: str, problems: Problems
) -> Assertion | None:
    value = raw["value"]
    if not isinstance(value, str):
        problems.error(f"{where}.value: {head.kind} code must be a string")
        return None
    if head.base_type == "javascript" and not build.node_available:
        problems.error(f"{where}: javascript assertions need `node` on PATH (not found)")
        return None
    evaluate = _code(head.base_type, value, raw, build.base, head.negate)
    return Assertion(head.kind, head.metric, head.weight, evaluate, dict(raw))


def _build_scored(
    raw: Mapping[str, Any],
    head: _Head,
    value: Any,
    test: TestCase,
    build: BuildContext,
    where: str,
    problems: Problems,
) -> Assertion | None:
    """An assertion answered by one of the eval scorers (or the best of several, for
    ``similar`` against a list)."""
    base_type = head.base_type
    scorer_type, extra = _SCORERS[base_type]
    spec: dict[str, Any] = {"type": ("not-" if head.negate else "") + scorer_type, **extra}
    context = build.scorer_context
    if base_type in {"is-json", "contains-json"}:
        if value is not None:
            spec["schema"] = _schema_value(value, build.base)
    elif scorer_type == "valid-tool-call":
        if not context.tools:
            problems.error(f"{where}: {head.kind} needs the provider's config.tools")
            return None
    elif scorer_type == "refusal":
        pass
    elif value is not None:
        spec["value"] = value
    if head.threshold is not None:
        spec["threshold"] = head.threshold
    elif base_type in _UNIT_DEFAULTS:
        spec["threshold"] = _UNIT_DEFAULTS[base_type]
    if base_type in _JUDGED:
        model = _judge_model(raw, test, build, where, problems)
        if model is None:
            return None
        spec["model"] = model
        if base_type != "llm-rubric":
            spec["question"] = "{{ " + PROMPT_VAR + " }}"
    if base_type == "similar" and "provider" in raw:
        similar_context = _similar_context(raw, context, build, where, problems)
        if similar_context is None:
            return None
        context = similar_context
    if base_type == "similar" and isinstance(value, list):
        scorers = [make_scorer({**spec, "value": v}, context=context) for v in value]
        evaluate = _best_of(scorers, head.negate)
        return Assertion(head.kind, head.metric, head.weight, evaluate, dict(raw))
    scorer = make_scorer(spec, context=context)
    evaluate = _scorer_evaluate(scorer)
    return Assertion(head.kind, head.metric, head.weight, evaluate, dict(raw), scorer)


def _similar_context(
    raw: Mapping[str, Any],
    context: ScorerContext,
    build: BuildContext,
    where: str,
    problems: Problems,
) -> ScorerContext | None:
    """The scorer context of a ``similar`` assertion that names its own embedding provider."""
    provider = raw["provider"]
    provider = provider.get("id") if isinstance(provider, Mapping) else provider
    from bastion.evals.promptfoo.config import map_provider_id

    alias = map_provider_id(
        str(provider), build.judge_models, problems, f"{where}.provider", embedding=True
    )
    if alias is None or build.embedder_for is None:
        return None
    return ScorerContext(
        judge=context.judge,
        embedder=build.embedder_for(alias),
        tools=context.tools,
        plugins=context.plugins,
    )


def _best_of(scorers: Sequence[Scorer], negate: bool) -> Evaluate:
    """``similar`` with a list of values: the closest one counts (negated: the farthest)."""

    async def evaluate(subject: Subject, runtime: Runtime) -> Verdict:
        item = subject.item()
        scores = await asyncio.gather(*(s.score(subject.output, item) for s in scorers))
        pick = min if negate else max
        return _from_score(pick(scores, key=lambda s: s.value))

    return evaluate


def build_assertions(
    test: TestCase, build: BuildContext, problems: Problems, where: str
) -> tuple[Assertion, ...]:
    """The test's assertions built (problems reported, none raised)."""
    built = [
        _build_one(raw, test, build, f"{where}.assert[{i}]", problems)
        for i, raw in enumerate(test.asserts)
    ]
    return tuple(a for a in built if a is not None)
