"""Gate rules: decide from a :class:`~bastion.evals.compare.Comparison` whether a candidate ships.

Configured in ``bastion.yaml`` under ``evals: {gate: ...}``::

    evals:
      gate:
        margins:          # non-inferiority margin per metric; "*" is the default for all
          "*": 0.02
          accuracy: 0.01
        min_pass_rate:    # candidate pass rate must be >= this ("*" default)
          "*": 0.8
        thresholds:       # hard floor on the candidate mean
          faithfulness: 0.7
        zero_tolerance:   # any failed candidate output on these metrics fails the gate
          - redteam.jailbreak

A metric fails its **margin** when the lower end of the 95% CI of the paired delta is below
``-margin``: the candidate is not shown to be at most ``margin`` worse than the baseline. A
small dataset gives a wide CI, so an underpowered comparison fails rather than passes silently;
a warning names the minimum detectable effect when it exceeds the margin (or 5 points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.evals.compare import Comparison, MetricComparison

if TYPE_CHECKING:
    from bastion.settings import Settings

__all__ = [
    "DEFAULT_DETECTABLE_DROP",
    "DEFAULT_RULES",
    "EXIT_ERROR",
    "EXIT_PASS",
    "EXIT_REGRESSION",
    "GateConfigError",
    "GateRules",
    "GateVerdict",
    "RuleCheck",
    "evaluate_gate",
]

EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2

DEFAULT = "*"
# Without a margin for a metric, warn when the dataset cannot detect a drop this large.
DEFAULT_DETECTABLE_DROP = 0.05

_KEYS = ("margins", "min_pass_rate", "thresholds", "zero_tolerance")
# The rules when bastion.yaml has no evals.gate section.
DEFAULT_RULES: Mapping[str, Any] = {"margins": {DEFAULT: 0.02}}


class GateConfigError(ValueError):
    """The ``evals.gate`` configuration is invalid; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class GateRules:
    margins: Mapping[str, float] = field(default_factory=dict)
    min_pass_rate: Mapping[str, float] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    zero_tolerance: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> GateRules:
        """The ``evals.gate`` rules of ``bastion.yaml``; :data:`DEFAULT_RULES` without them.

        Raises:
            GateConfigError: the section is invalid.
        """
        section = settings.sections.get("evals") or {}
        raw = section.get("gate") if isinstance(section, dict) else None
        return cls.from_mapping(raw if raw is not None else DEFAULT_RULES)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GateRules:
        """Build rules from the ``evals.gate`` section of ``bastion.yaml`` (see module doc)."""
        if not isinstance(data, Mapping):
            raise GateConfigError(f"evals.gate must be a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise GateConfigError(
                f"unknown key(s) in evals.gate: {', '.join(unknown)} (expected: {', '.join(_KEYS)})"
            )
        return cls(
            margins=_metric_map(data.get("margins"), "margins", upper=None),
            min_pass_rate=_metric_map(data.get("min_pass_rate"), "min_pass_rate", upper=1.0),
            thresholds=_metric_map(data.get("thresholds"), "thresholds", upper=1.0),
            zero_tolerance=_metric_list(data.get("zero_tolerance"), "zero_tolerance"),
        )


def _metric_map(raw: Any, key: str, *, upper: float | None) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GateConfigError(
            f"evals.gate.{key} must be a mapping of metric name to number, got {type(raw).__name__}"
        )
    out: dict[str, float] = {}
    for metric, value in raw.items():
        where = f"evals.gate.{key}.{metric}"
        if not isinstance(metric, str) or not metric:
            raise GateConfigError(f"{where}: metric names must be non-empty strings")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GateConfigError(f"{where} must be a number, got {value!r}")
        number = float(value)
        if math.isnan(number) or number < 0 or (upper is not None and number > upper):
            bound = f"[0, {upper:g}]" if upper is not None else ">= 0"
            raise GateConfigError(f"{where} must be {bound}, got {value!r}")
        out[metric] = number
    return out


def _metric_list(raw: Any, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise GateConfigError(f"evals.gate.{key} must be a list of metric names, got {raw!r}")
    for metric in raw:
        if not isinstance(metric, str) or not metric:
            raise GateConfigError(f"evals.gate.{key}: {metric!r} is not a metric name")
    return tuple(raw)


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule applied to one metric (a JUnit test case)."""

    metric: str
    rule: str  # "margin", "min_pass_rate", "threshold", "zero_tolerance", "paired"
    passed: bool
    message: str


@dataclass(frozen=True, slots=True)
class GateVerdict:
    passed: bool
    failures: tuple[str, ...]
    warnings: tuple[str, ...]
    checks: tuple[RuleCheck, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.passed else EXIT_REGRESSION

    def metric_passed(self, metric: str) -> bool | None:
        """Whether every rule on ``metric`` passed; None when no rule applies to it."""
        results = [c.passed for c in self.checks if c.metric == metric]
        return all(results) if results else None


def _rule_for(rules: Mapping[str, float], metric: str) -> float | None:
    if metric in rules:
        return rules[metric]
    return rules.get(DEFAULT)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _check_metric(mc: MetricComparison, rules: GateRules) -> list[RuleCheck]:
    checks: list[RuleCheck] = []
    m = mc.metric
    margin = _rule_for(rules.margins, m)
    if margin is not None:
        ok = mc.ci_low >= -margin
        checks.append(
            RuleCheck(
                m,
                "margin",
                ok,
                f"{m}: paired delta {mc.delta:+.3f} (95% CI {mc.ci_low:+.3f} to "
                f"{mc.ci_high:+.3f}, {mc.n_items} items) "
                + (
                    f"is within the non-inferiority margin of {margin:.3f}"
                    if ok
                    else f"may be worse than the non-inferiority margin allows: the CI's "
                    f"lower bound {mc.ci_low:+.3f} is below -{margin:.3f}"
                ),
            )
        )
    min_rate = _rule_for(rules.min_pass_rate, m)
    if min_rate is not None:
        ok = mc.candidate_pass_rate >= min_rate
        checks.append(
            RuleCheck(
                m,
                "min_pass_rate",
                ok,
                f"{m}: candidate pass rate {_pct(mc.candidate_pass_rate)} "
                f"(baseline {_pct(mc.baseline_pass_rate)}) is "
                + ("at or above" if ok else "below")
                + f" the minimum {_pct(min_rate)}",
            )
        )
    threshold = _rule_for(rules.thresholds, m)
    if threshold is not None:
        ok = mc.candidate_mean >= threshold
        checks.append(
            RuleCheck(
                m,
                "threshold",
                ok,
                f"{m}: candidate mean {mc.candidate_mean:.3f} (baseline {mc.baseline_mean:.3f}) "
                + ("meets" if ok else "is below")
                + f" the hard threshold {threshold:.3f}",
            )
        )
    return checks


def evaluate_gate(comparison: Comparison, rules: GateRules) -> GateVerdict:
    """Apply ``rules`` to ``comparison``. Every failed rule is one human-readable failure."""
    checks: list[RuleCheck] = []
    warnings: list[str] = []
    present = {mc.metric: mc for mc in comparison.metrics}

    for mc in comparison.metrics:
        checks.extend(_check_metric(mc, rules))
        margin = _rule_for(rules.margins, mc.metric)
        target = margin if margin else DEFAULT_DETECTABLE_DROP
        if mc.mde > target:
            mde = "undefined (fewer than 2 items)" if math.isinf(mc.mde) else f"{mc.mde:.3f}"
            warnings.append(
                f"{mc.metric}: dataset too small to detect a {target * 100:g}-point drop "
                f"({mc.n_items} items, MDE {mde})"
            )

    # Rules naming a metric that has no paired results cannot be checked: that fails.
    named = {
        metric
        for mapping in (rules.margins, rules.min_pass_rate, rules.thresholds)
        for metric in mapping
        if metric != DEFAULT
    }
    for metric in sorted(named - present.keys()):
        checks.append(
            RuleCheck(
                metric,
                "paired",
                False,
                f"{metric}: a gate rule names this metric but neither run pairs any item on it",
            )
        )

    for metric in rules.zero_tolerance:
        rows = [r for r in comparison.candidate.rows if r.metric == metric]
        failed = sorted({r.item_id for r in rows if not r.passed})
        if not rows:
            checks.append(
                RuleCheck(
                    metric,
                    "zero_tolerance",
                    False,
                    f"{metric}: zero-tolerance metric has no candidate results",
                )
            )
            continue
        n_failed = sum(not r.passed for r in rows)
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        checks.append(
            RuleCheck(
                metric,
                "zero_tolerance",
                n_failed == 0,
                f"{metric}: all {len(rows)} candidate outputs passed (zero tolerance)"
                if n_failed == 0
                else f"{metric}: {n_failed} of {len(rows)} candidate outputs failed a "
                f"zero-tolerance metric (items: {shown})",
            )
        )

    if comparison.unpaired_items:
        n = len(comparison.unpaired_items)
        warnings.append(
            f"{n} item(s) lack a counterpart in the other run on some metric and were left "
            "out of the paired statistics"
        )
    failures = tuple(c.message for c in checks if not c.passed)
    return GateVerdict(
        passed=not failures,
        failures=failures,
        warnings=tuple(warnings),
        checks=tuple(checks),
    )
