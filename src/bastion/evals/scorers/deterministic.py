"""Deterministic scorers: string matching, similarity to the expected output, latency and
cost budgets and refusal detection. The JSON, JSON Schema and tool-call scorers live in
:mod:`bastion.evals.scorers.structured` and are re-exported here.

Each factory has the entry-point signature ``(spec, context) -> Scorer``; the registry adds
the metric name, the weight and ``not-`` negation around it. Spec values may refer to the item
(``"{{ expected }}"``, ``"{{ vars.city }}"``, ``"{{ city }}"``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import Output, ScorerError, as_text, parse_json_text, render_value
from bastion.evals.scorers.checks import (
    CheckScorer,
    check_keys,
    no_reference,
    short,
    spec_ignore_case,
    spec_reference,
    spec_text,
    spec_threshold,
)
from bastion.evals.scorers.jsonschema import schema_errors
from bastion.evals.scorers.structured import contains_json, is_json, json_schema, valid_tool_call

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


# -- string matching ----------------------------------------------------------------------------


def equals(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output equals ``value`` (default: the item's expected output). A non-string
    expected value (object, list, number) is compared with the output parsed as JSON."""
    check_keys(spec, {"value", "ignore_case", "strip"})
    fold = spec_ignore_case(spec)
    strip = bool(spec.get("strip", True))

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        wanted = spec_reference(spec, item)
        if wanted is None:
            return no_reference("equals", item)
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
            f"output equals {short(wanted)}"
            if same
            else f"output {short(output.text)} does not equal {short(wanted)}"
        )
        return float(same), same, reason, {}

    return CheckScorer("equals", check)


def _contains(spec: Mapping[str, Any], kind: str, fold: bool) -> CheckScorer:
    check_keys(spec, {"value"} if kind == "icontains" else {"value", "ignore_case"})
    if "value" not in spec:
        raise ScorerError(f"{kind}: 'value' is required")
    fold = fold or spec_ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        needle = as_text(render_value(spec["value"], item))
        text = output.text
        found = (needle.casefold() in text.casefold()) if fold else (needle in text)
        reason = f"output {'contains' if found else 'does not contain'} {short(needle)}"
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
    fold = spec_ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        needles = _needles(spec, item, kind)
        text = output.text.casefold() if fold else output.text
        hits = [n for n in needles if (n.casefold() if fold else n) in text]
        misses = [n for n in needles if n not in hits]
        details = {"found": hits, "missing": misses}
        if kind == "contains-any":
            ok = bool(hits)
            reason = (
                f"output contains {short(hits[0])}"
                if ok
                else f"output contains none of {', '.join(map(short, needles))}"
            )
            return float(ok), ok, reason, details
        ok = not misses
        reason = (
            f"output contains all {len(needles)} values"
            if ok
            else f"output lacks {', '.join(map(short, misses))}"
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
    flags = re.IGNORECASE if spec_ignore_case(spec) else 0
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
        return 1.0, True, f"output matches /{rx.pattern}/ at {short(match.group(0))}", {}

    return CheckScorer("regex", check)


def starts_with(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output (leading whitespace ignored) starts with ``value``."""
    check_keys(spec, {"value", "ignore_case"})
    if "value" not in spec:
        raise ScorerError("starts-with: 'value' is required")
    fold = spec_ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        prefix = as_text(render_value(spec["value"], item))
        text = output.text.lstrip()
        ok = text.casefold().startswith(prefix.casefold()) if fold else text.startswith(prefix)
        reason = f"output {'starts' if ok else 'does not start'} with {short(prefix)}"
        return float(ok), ok, reason, {}

    return CheckScorer("starts-with", check)


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
    threshold = spec_threshold(spec, 0.8)
    fold = spec_ignore_case(spec)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        reference = spec_text(spec, item)
        if reference is None:
            return no_reference("levenshtein", item)
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
    threshold = spec_threshold(spec, 0.75)
    n = spec.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
        raise ScorerError(f"rouge-n: 'n' must be an integer from 1 to 8, got {n!r}")

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        reference = spec_text(spec, item)
        if reference is None:
            return no_reference("rouge-n", item)
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
    threshold = spec_threshold(spec, None, unit=False)

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
                return 1.0, True, f"refusal: {short(match.group(0))}", {"pattern": rx.pattern}
        return 0.0, False, "no refusal found", {}

    return CheckScorer("refusal", check)
