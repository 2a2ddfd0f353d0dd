"""promptfoo test cases: inline, from files, from CSV rows with ``__expected`` columns, with
``defaultTest`` merged in, ``scenarios`` crossed with their configs, array vars expanded and
``file://`` vars read.

The rules follow promptfoo's documentation: a CSV column ``__expected`` (or ``__expected1``,
``__expected2``...) holds one assertion written as a string (``contains: foo``, ``not-regex:
^x``, ``similar(0.9): text``, ``javascript: ...``, ``python: ...``, ``grade: rubric``; anything
else is an ``equals``); ``__description``, ``__threshold``, ``__metric``, ``__prefix``,
``__suffix`` and ``__metadata:KEY`` are the test's other fields; every other column is a var.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.evals.promptfoo.loading import (
    Problems,
    PromptfooError,
    expand_paths,
    is_file_ref,
    jsonable,
    read_data_file,
    read_rows,
)

__all__ = [
    "KNOWN_ASSERTION_TYPES",
    "TestCase",
    "assertion_from_string",
    "csv_row_to_test",
    "expand_tests",
]

# promptfoo's assertion type names, supported or not: a CSV cell starting with one of them is
# that assertion (an unsupported one is then reported by name, not mistaken for `equals`).
KNOWN_ASSERTION_TYPES: tuple[str, ...] = (
    "answer-relevance", "bleu", "classifier", "contains-all", "contains-any", "contains-html",
    "contains-json", "contains-sql", "contains-xml", "contains", "context-faithfulness",
    "context-recall", "context-relevance", "conversation-relevance", "cost", "equals",
    "factuality", "finish-reason", "g-eval", "gleu", "guardrails", "icontains-all",
    "icontains-any", "icontains", "is-html", "is-json", "is-refusal", "is-sql",
    "is-valid-function-call", "is-valid-openai-function-call", "is-valid-openai-tools-call",
    "is-xml", "javascript", "latency", "levenshtein", "llm-rubric", "meteor",
    "model-graded-closedqa", "model-graded-factuality", "moderation", "perplexity-score",
    "perplexity", "pi", "python", "regex", "rouge-n", "ruby", "similar", "starts-with",
    "webhook", "word-count",
)  # fmt: skip
_LIST_TYPES = frozenset({"contains-all", "contains-any", "icontains-all", "icontains-any"})
_RAW_TYPES = frozenset({"contains-json", "is-json"})
_THRESHOLD_TYPES = frozenset({"cost", "latency", "levenshtein", "rouge-n", "similar"})
_ASSERTION_RE = re.compile(
    r"^(not-)?("
    + "|".join(re.escape(t) for t in sorted(KNOWN_ASSERTION_TYPES, key=len, reverse=True))
    + r")(?:\((\d+(?:\.\d+)?)\))?(?::([\s\S]*))?$"
)
_JS_FILE = re.compile(r"\.(?:js|cjs|mjs|ts)(?::[\w$]+)?$")
_PY_FILE = re.compile(r"\.py(?::\w+)?$")

TEST_KEYS = frozenset({"vars", "assert", "description", "threshold", "options", "metadata"})
OPTION_KEYS = frozenset({"prefix", "suffix", "provider", "disableVarExpansion"})
_OPTION_HARMLESS = frozenset({"runSerially", "disableConversationVar"})
SCENARIO_KEYS = frozenset({"description", "config", "tests"})


@dataclass(frozen=True, slots=True)
class TestCase:
    """One test after expansion: the vars it renders the prompt with and its raw assertions.

    ``where`` says where it came from (``tests[3]``, ``tests.csv:7``, ``scenarios[0]...``).
    """

    __test__ = False  # not a pytest class, despite the name

    index: int
    where: str
    vars: Mapping[str, Any]
    asserts: tuple[Mapping[str, Any], ...] = ()
    description: str | None = None
    threshold: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def assertion_from_string(expected: str) -> dict[str, Any]:
    """One ``__expected`` cell as an assertion, by promptfoo's documented rules."""
    text = expected.strip()
    for prefix in ("javascript:", "fn:", "eval:"):
        if text.startswith(prefix):
            return {"type": "javascript", "value": text[len(prefix) :].strip()}
    if text.startswith("file://") and _JS_FILE.search(text):
        return {"type": "javascript", "value": text}
    if text.startswith("grade:"):
        return {"type": "llm-rubric", "value": text[len("grade:") :].strip()}
    if text.startswith("llm-rubric:"):
        return {"type": "llm-rubric", "value": text[len("llm-rubric:") :].strip()}
    if text.startswith("python:"):
        return {"type": "python", "value": text[len("python:") :].strip()}
    if text.startswith("file://") and _PY_FILE.search(text):
        return {"type": "python", "value": text}
    match = _ASSERTION_RE.match(text)
    if match is None:
        return {"type": "equals", "value": expected}
    negation, kind, threshold, value = match.groups()
    full = f"{negation or ''}{kind}"
    if kind in _LIST_TYPES:
        items = [part.strip() for part in value.split(",")] if value else []
        return {"type": full, "value": items}
    if kind in _RAW_TYPES:
        return {"type": full} if value is None else {"type": full, "value": value}
    out: dict[str, Any] = {"type": full}
    if value is not None:
        out["value"] = value.strip()
    if kind in _THRESHOLD_TYPES:
        if threshold is not None:
            out["threshold"] = float(threshold)
        elif kind == "similar":
            out["threshold"] = 0.8
        elif kind == "rouge-n":
            out["threshold"] = 0.75
    elif threshold is not None:
        out["threshold"] = float(threshold)
    return out


def csv_row_to_test(row: Mapping[str, str], where: str, problems: Problems) -> dict[str, Any]:
    """A CSV row as a promptfoo test: reserved ``__`` columns, every other column a var."""
    test: dict[str, Any] = {"vars": {}, "assert": []}
    options: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    metric: str | None = None
    for raw_key, value in row.items():
        key = raw_key.strip()
        if re.fullmatch(r"__expected\d*", key):
            if value.strip():
                test["assert"].append(assertion_from_string(value))
        elif key == "__description":
            test["description"] = value
        elif key == "__threshold":
            try:
                test["threshold"] = float(value) if value.strip() else None
            except ValueError:
                problems.error(f"{where}: __threshold {value!r} is not a number")
        elif key == "__metric":
            metric = value.strip() or None
        elif key in {"__prefix", "__suffix"}:
            options[key[2:]] = value
        elif key.startswith("__metadata:"):
            name = key[len("__metadata:") :]
            if name.endswith("[]"):
                if value.strip():
                    metadata[name[:-2]] = [
                        p.strip().replace("\\,", ",") for p in re.split(r"(?<!\\),", value)
                    ]
            elif value.strip():
                metadata[name] = value
        elif key.startswith("__"):
            problems.error(f"{where}: unsupported CSV column {key!r}")
        else:
            test["vars"][key] = value
    if metric:
        for assertion in test["assert"]:
            assertion["metric"] = metric
    if options:
        test["options"] = options
    if metadata:
        test["metadata"] = metadata
    if test.get("threshold") is None:
        test.pop("threshold", None)
    return test


# -- reading tests ------------------------------------------------------------------------------


def _load_test_refs(
    value: Any, base: Path, where: str, problems: Problems
) -> list[tuple[str, Any]]:
    """``tests:`` as a list of ``(where, raw test)``: inline tests, file references, globs."""
    entries = value if isinstance(value, list) else [value]
    out: list[tuple[str, Any]] = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]" if isinstance(value, list) else where
        if isinstance(entry, str):
            try:
                paths = expand_paths(entry, base)
                for path in paths:
                    for row_where, row in read_rows(path):
                        if path.suffix.lower() == ".csv":
                            row = csv_row_to_test(row, row_where, problems)
                        out.append((row_where, row))
            except PromptfooError as exc:
                problems.error(f"{at}: {exc}")
        elif isinstance(entry, Mapping):
            out.append((at, entry))
        else:
            problems.error(f"{at}: a test must be a mapping or a file reference, got {entry!r}")
    return out


def _load_vars(value: Any, base: Path, where: str, problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if is_file_ref(value):
        merged: dict[str, Any] = {}
        try:
            for path in expand_paths(value, base):
                data = read_data_file(path)
                if not isinstance(data, Mapping):
                    problems.error(f"{where}.vars: {path} must hold a mapping of vars")
                    continue
                merged.update(data)
        except PromptfooError as exc:
            problems.error(f"{where}.vars: {exc}")
        value = merged
    if not isinstance(value, Mapping):
        problems.error(f"{where}.vars: must be a mapping, got {type(value).__name__}")
        return {}
    out: dict[str, Any] = {}
    for name, raw in value.items():
        out[str(name)] = _var_value(raw, base, f"{where}.vars.{name}", problems)
    return out


_VAR_CODE = frozenset({".py", ".js", ".cjs", ".mjs", ".ts"})
_VAR_BINARY = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf", ".mp3", ".wav", ".mp4"})


def _var_value(raw: Any, base: Path, where: str, problems: Problems) -> Any:
    if isinstance(raw, list):
        return [_var_value(v, base, where, problems) for v in raw]
    if not is_file_ref(raw):
        return jsonable(raw)
    try:
        paths = expand_paths(raw, base)
    except PromptfooError as exc:
        problems.error(f"{where}: {exc}")
        return None
    values = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in _VAR_CODE:
            problems.error(f"{where}: vars computed by {suffix} files are not supported ({raw})")
            return None
        if suffix in _VAR_BINARY:
            problems.error(f"{where}: {suffix} files as vars (images, audio...) are not supported")
            return None
        try:
            values.append(read_data_file(path))
        except PromptfooError as exc:
            problems.error(f"{where}: {exc}")
            return None
    return values[0] if len(values) == 1 else values


def _asserts(value: Any, where: str, problems: Problems) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, Mapping) for a in value):
        problems.error(f"{where}.assert: must be a list of assertion mappings")
        return []
    return [jsonable(a) for a in value]


def _options(value: Any, where: str, problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.error(f"{where}.options: must be a mapping")
        return {}
    problems.unknown_keys(f"{where}.options", value, OPTION_KEYS, _OPTION_HARMLESS)
    return {k: v for k, v in value.items() if k in OPTION_KEYS}


def _threshold(value: Any, where: str, problems: Problems) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.error(f"{where}.threshold: must be a number, got {value!r}")
        return None
    return float(value)


def _metadata(value: Any, where: str, problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.error(f"{where}.metadata: must be a mapping")
        return {}
    return dict(jsonable(value))


@dataclass
class _Raw:
    """A test's fields parsed, before defaultTest and var expansion."""

    where: str
    vars: dict[str, Any]
    asserts: list[Mapping[str, Any]]
    description: str | None
    threshold: float | None
    options: dict[str, Any]
    metadata: dict[str, Any]


def _parse(raw: Any, where: str, base: Path, problems: Problems) -> _Raw | None:
    if isinstance(raw, str) and raw.startswith("file://"):
        loaded = _load_test_refs(raw, base, where, problems)
        if len(loaded) != 1:
            problems.error(f"{where}: {raw} must hold exactly one test here")
            return None
        where, raw = loaded[0]
    if not isinstance(raw, Mapping):
        problems.error(f"{where}: a test must be a mapping, got {type(raw).__name__}")
        return None
    problems.unknown_keys(where, raw, TEST_KEYS)
    description = raw.get("description")
    return _Raw(
        where=where,
        vars=_load_vars(raw.get("vars"), base, where, problems),
        asserts=_asserts(raw.get("assert"), where, problems),
        description=None if description is None else str(description),
        threshold=_threshold(raw.get("threshold"), where, problems),
        options=_options(raw.get("options"), where, problems),
        metadata=_metadata(raw.get("metadata"), where, problems),
    )


def _merge(first: _Raw, second: _Raw, where: str) -> _Raw:
    """``second`` layered over ``first`` (promptfoo's defaultTest/scenario merge): vars,
    options and metadata by key, assertions concatenated, the later threshold wins."""
    return _Raw(
        where=where,
        vars={**first.vars, **second.vars},
        asserts=[*first.asserts, *second.asserts],
        description=second.description or first.description,
        threshold=second.threshold if second.threshold is not None else first.threshold,
        options={**first.options, **second.options},
        metadata={**first.metadata, **second.metadata},
    )


def _expand_vars(raw: _Raw) -> list[dict[str, Any]]:
    """promptfoo expands list-valued vars into one test per combination (unless the test sets
    ``options.disableVarExpansion``)."""
    if raw.options.get("disableVarExpansion"):
        return [raw.vars]
    lists = {k: v for k, v in raw.vars.items() if isinstance(v, list) and v}
    if not lists:
        return [raw.vars]
    names = list(lists)
    out = []
    for combination in itertools.product(*(lists[n] for n in names)):
        out.append({**raw.vars, **dict(zip(names, combination, strict=True))})
    return out


def expand_tests(config: Mapping[str, Any], base: Path, problems: Problems) -> list[TestCase]:
    """Every test the config defines, in promptfoo's order: ``tests`` then each scenario's
    (config entry x test) pairs, each with ``defaultTest`` layered under it."""
    base_layer = _default_layer(config.get("defaultTest"), base, problems)
    raws: list[_Raw] = []
    tests = config.get("tests")
    if tests is not None:
        for where, raw in _load_test_refs(tests, base, "tests", problems):
            parsed = _parse(raw, where, base, problems)
            if parsed is not None:
                raws.append(_merge(base_layer, parsed, where))
    scenarios = config.get("scenarios")
    if scenarios is not None:
        if not isinstance(scenarios, list):
            problems.error("scenarios: must be a list")
            scenarios = []
        for s_index, scenario in enumerate(scenarios):
            raws.extend(
                _scenario_tests(scenario, f"scenarios[{s_index}]", base_layer, base, problems)
            )
    cases: list[TestCase] = []
    for raw in raws:
        for variables in _expand_vars(raw):
            cases.append(
                TestCase(
                    index=len(cases),
                    where=raw.where,
                    vars=variables,
                    asserts=tuple(raw.asserts),
                    description=raw.description,
                    threshold=raw.threshold,
                    options=raw.options,
                    metadata=raw.metadata,
                )
            )
    return cases


def _default_layer(default: Any, base: Path, problems: Problems) -> _Raw:
    """``defaultTest`` (inline or a file reference), parsed; empty when absent or invalid."""
    default_raw: _Raw | None = None
    if default is not None:
        if is_file_ref(default):
            try:
                paths = expand_paths(default, base)
                default = read_data_file(paths[0])
            except PromptfooError as exc:
                problems.error(f"defaultTest: {exc}")
                default = None
        if default is not None:
            default_raw = _parse(default, "defaultTest", base, problems)
    return default_raw or _Raw("", {}, [], None, None, {}, {})


def _scenario_tests(
    scenario: Any, s_where: str, base_layer: _Raw, base: Path, problems: Problems
) -> list[_Raw]:
    """One scenario's tests: every config entry crossed with every test."""
    if is_file_ref(scenario):
        try:
            scenario = read_data_file(expand_paths(scenario, base)[0])
        except PromptfooError as exc:
            problems.error(f"{s_where}: {exc}")
            return []
    if not isinstance(scenario, Mapping):
        problems.error(f"{s_where}: must be a mapping")
        return []
    problems.unknown_keys(s_where, scenario, SCENARIO_KEYS)
    entries = _load_test_refs(scenario.get("config") or [], base, f"{s_where}.config", problems)
    tests_of = _load_test_refs(scenario.get("tests") or [], base, f"{s_where}.tests", problems)
    if not entries or not tests_of:
        problems.error(f"{s_where}: needs a non-empty 'config' and 'tests'")
        return []
    raws: list[_Raw] = []
    for c_where, c_raw in entries:
        layer = _parse(c_raw, c_where, base, problems)
        if layer is None:
            continue
        for t_where, t_raw in tests_of:
            test = _parse(t_raw, t_where, base, problems)
            if test is None:
                continue
            at = f"{c_where} x {t_where}"
            merged = _merge(_merge(base_layer, layer, at), test, at)
            parts = [
                p for p in (scenario.get("description"), layer.description, test.description) if p
            ]
            merged.description = " / ".join(str(p) for p in parts) or None
            raws.append(merged)
    return raws


def provider_refs(cases: Sequence[TestCase]) -> set[str]:
    """Grading provider ids the tests name in ``options.provider`` (strings or ``{id}``)."""
    found: set[str] = set()
    for case in cases:
        provider = case.options.get("provider")
        if isinstance(provider, str):
            found.add(provider)
        elif isinstance(provider, Mapping) and isinstance(provider.get("id"), str):
            found.add(provider["id"])
    return found
