"""What the check scorers share: the scorer made of a synchronous check, the refusal of
unknown spec keys, and the reading of common spec arguments (``threshold``, ``ignore_case``,
``value`` or the item's expected output)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import Output, Score, ScorerError, as_text, clamp, render_value

if TYPE_CHECKING:
    from bastion.evals.datasets import Item

__all__ = [
    "COMMON_KEYS",
    "Check",
    "CheckScorer",
    "check_keys",
    "no_reference",
    "short",
    "spec_ignore_case",
    "spec_reference",
    "spec_text",
    "spec_threshold",
]

COMMON_KEYS = frozenset({"type", "metric", "weight"})

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


def spec_threshold(spec: Mapping[str, Any], default: float | None, *, unit: bool = True) -> float:
    """The spec's ``threshold`` (else ``default``): a number, in [0, 1] when ``unit``."""
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


def spec_ignore_case(spec: Mapping[str, Any]) -> bool:
    """The spec's ``ignore_case`` flag (default false)."""
    value = spec.get("ignore_case", False)
    if not isinstance(value, bool):
        raise ScorerError(f"{spec.get('type', '?')}: 'ignore_case' must be true or false")
    return value


def spec_reference(spec: Mapping[str, Any], item: Item) -> Any:
    """The spec's ``value`` rendered for ``item``, or the item's expected output."""
    if "value" in spec:
        return render_value(spec["value"], item)
    return item.expected


def spec_text(spec: Mapping[str, Any], item: Item) -> str | None:
    """:func:`spec_reference` as text, ``None`` when there is none."""
    value = spec_reference(spec, item)
    return None if value is None else as_text(value)


def short(text: str, limit: int = 80) -> str:
    """``text`` quoted and cut to ``limit`` characters, for reasons."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def no_reference(kind: str, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
    """The failed check of a scorer that has nothing to compare the output with."""
    return (
        0.0,
        False,
        f"{kind}: no 'value' given and item {item.id!r} has no expected output",
        {"error": "no reference"},
    )
