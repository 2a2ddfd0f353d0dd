"""What every scorer shares: the model output being judged, the score it gets, the protocol.

A scorer looks at one :class:`Output` for one dataset :class:`~bastion.evals.datasets.Item` and
returns a :class:`Score` whose ``value`` is in [0, 1], with a pass/fail verdict and a reason a
person can read in a CI log. Scorers never raise for a bad *output* (that is a failed score);
they raise :class:`ScorerError` for a bad *configuration* (unknown type, bad arguments), and
:class:`ScoreError` when they could not judge this output (an LLM judge whose verdict cannot be
read): an error on the item, never a score.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bastion.evals.datasets import Item

__all__ = [
    "Output",
    "Score",
    "ScoreError",
    "Scorer",
    "ScorerError",
    "as_text",
    "clamp",
    "find_json",
    "parse_json_text",
    "render_value",
    "template_variables",
]


class ScorerError(ValueError):
    """A scorer cannot be built or used as configured: an unknown type (the message lists the
    known ones), a missing or malformed argument, a missing judge or embedder."""


class ScoreError(Exception):
    """The scorer could not judge this output (e.g. its judge's verdict was unreadable): the
    item is an error of the run, counted and reported as one, not a score of 0.

    ``details`` holds what the scorer knows (the judge's prompt and raw verdict), for reports.
    """

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})


def clamp(value: float) -> float:
    """``value`` forced into [0, 1] (NaN becomes 0)."""
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


@dataclass(frozen=True, slots=True)
class Score:
    """One scorer's verdict on one output.

    Attributes:
        metric: the metric name, e.g. ``contains`` or the spec's ``metric``.
        value: in [0, 1]; 1 is best.
        passed: whether the output meets the scorer's bar (threshold, expectation).
        reason: why, for a person reading a CI log.
        details: extra facts, e.g. the judge's model, prompt hash and raw verdict.
    """

    metric: str
    value: float
    passed: bool
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise TypeError(f"Score.value must be a number, got {self.value!r}")
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"Score.value must be in [0, 1], got {self.value!r}")


@dataclass(frozen=True, slots=True)
class Output:
    """What the system under test produced for one item.

    Attributes:
        text: the answer text.
        latency_ms: end-to-end latency, when measured.
        cost_usd: the call's cost, when known.
        tool_calls: tool calls in OpenAI (``{"function": {"name", "arguments"}}``), Anthropic
            (``{"name", "input"}``) or flat (``{"name", "arguments"}``) shape.
        raw: the provider's response, for custom scorers.
    """

    text: str
    latency_ms: float | None = None
    cost_usd: float | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    raw: Any = None


@runtime_checkable
class Scorer(Protocol):
    """Anything with a metric ``name`` and an async ``score``.

    ``name`` is declared read-only so frozen dataclasses satisfy the protocol too.
    """

    @property
    def name(self) -> str: ...

    async def score(self, output: Output, item: Item) -> Score: ...


# -- helpers shared by the built-in scorers -------------------------------------------------------

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*\}\}")


def template_variables(value: Any) -> frozenset[str]:
    """The item variables a spec value refers to (``{{ x }}`` / ``{{ vars.x }}``), without
    ``expected``."""
    found: set[str] = set()
    if isinstance(value, str):
        for name in _VARIABLE.findall(value):
            if name != "expected":
                found.add(name.removeprefix("vars."))
    elif isinstance(value, Mapping):
        for v in value.values():
            found |= template_variables(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= template_variables(v)
    return frozenset(found)


def _lookup(name: str, item: Item) -> Any:
    if name == "expected":
        return item.expected
    key = name.removeprefix("vars.")
    if key not in item.vars:
        raise ScorerError(
            f"item {item.id!r} has no variable {key!r} (referenced as {{{{ {name} }}}})"
        )
    return item.vars[key]


def as_text(value: Any) -> str:
    """A value as text: strings unchanged, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def render_value(value: Any, item: Item) -> Any:
    """``value`` with ``{{ expected }}``, ``{{ name }}`` and ``{{ vars.name }}`` filled in from
    ``item``. A string that is exactly one reference becomes the referenced value unchanged (so
    ``"{{ expected }}"`` can be a list or an object); lists and mappings are rendered inside.

    Raises:
        ScorerError: the item lacks a referenced variable.
    """
    if isinstance(value, str):
        whole = _VARIABLE.fullmatch(value.strip())
        if whole is not None:
            return _lookup(whole.group(1), item)
        return _VARIABLE.sub(lambda m: as_text(_lookup(m.group(1), item)), value)
    if isinstance(value, Mapping):
        return {k: render_value(v, item) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, item) for v in value]
    return value


def find_json(text: str, *, limit: int = 256) -> list[Any]:
    """JSON objects and arrays embedded in ``text`` (inside code fences or prose), outermost
    first, in order; at most ``limit`` start positions are tried."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    position = 0
    tries = 0
    while tries < limit:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        tries += 1
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        found.append(value)
        position = end
    return found


def parse_json_text(text: str, *, fences: bool = False) -> tuple[bool, Any]:
    """``(True, value)`` when the whole text (surrounding whitespace allowed, and one code
    fence around it when ``fences``) is JSON, else ``(False, None)``."""
    stripped = text.strip()
    fenced = _FENCE.fullmatch(stripped) if fences else None
    if fenced is not None:
        stripped = fenced.group(1).strip()
    try:
        return True, json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        return False, None


_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n(.*?)\n?```", re.DOTALL)
