"""Paired comparison of a candidate eval run against its baseline, independent of storage.

Rules (what "paired" means here):

* Repeats are averaged per item first: an item's value for a metric is the mean of its
  repeats' values, and its pass rate the fraction of repeats that passed. An item **passes**
  when at least half of its repeats passed (``mean(passed) >= 0.5``; a 1-1 tie passes).
* Only items scored on a metric in *both* runs are paired for that metric. Every other item id
  is listed in :attr:`Comparison.unpaired_items` and excluded from the paired statistics.
* Per metric: the mean of per-item values in each run over the paired items, the mean paired
  delta (candidate - baseline) with a paired percentile-bootstrap CI, the pass rates, an exact
  McNemar test on per-item pass/fail, and the minimum detectable effect for this many items.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from bastion.evals.stats import mcnemar_exact, minimum_detectable_effect, paired_bootstrap_ci

__all__ = [
    "Comparison",
    "ItemDelta",
    "MetricComparison",
    "ResultRow",
    "RunResults",
    "compare",
]

WORST_ITEMS = 10


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One scored output: an item's repeat, scored on one metric."""

    item_id: str
    repeat: int
    metric: str
    value: float  # in [0, 1]
    passed: bool
    output: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunResults:
    """All scored rows of one eval run."""

    run_id: str
    label: str  # what was evaluated, e.g. "summarize@production" or "summarize v3"
    rows: tuple[ResultRow, ...]


@dataclass(frozen=True, slots=True)
class ItemDelta:
    """One paired item's repeat-averaged values on a metric."""

    item_id: str
    baseline: float
    candidate: float
    delta: float
    baseline_output: str | None
    candidate_output: str | None


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """Paired statistics for one metric."""

    metric: str
    n_items: int
    baseline_mean: float
    candidate_mean: float
    delta: float  # mean over items of (candidate - baseline)
    ci_low: float  # paired bootstrap 95% CI of ``delta``
    ci_high: float
    baseline_pass_rate: float
    candidate_pass_rate: float
    mcnemar_b: int  # items that pass in the baseline and fail in the candidate
    mcnemar_c: int  # items that fail in the baseline and pass in the candidate
    mcnemar_p: float | None  # exact two-sided; None when there are no discordant items
    mde: float  # 80% power, alpha 0.05; inf with fewer than 2 items
    worst_items: tuple[ItemDelta, ...]  # most regressed items (delta < 0), worst first


@dataclass(frozen=True, slots=True)
class Comparison:
    """A candidate run compared with its baseline, metric by metric."""

    baseline: RunResults
    candidate: RunResults
    metrics: tuple[MetricComparison, ...]
    unpaired_items: tuple[str, ...]  # item ids lacking a pair on some metric (sorted)


@dataclass(slots=True)
class _ItemAgg:
    value: float
    pass_fraction: float
    output: str | None


def _aggregate(rows: Iterable[ResultRow]) -> dict[str, dict[str, _ItemAgg]]:
    """metric -> item_id -> repeat-averaged value, pass fraction and first repeat's output."""
    grouped: dict[str, dict[str, list[ResultRow]]] = {}
    for row in rows:
        grouped.setdefault(row.metric, {}).setdefault(row.item_id, []).append(row)
    out: dict[str, dict[str, _ItemAgg]] = {}
    for metric, items in grouped.items():
        per_item: dict[str, _ItemAgg] = {}
        for item_id, item_rows in items.items():
            item_rows.sort(key=lambda r: r.repeat)
            values = [float(r.value) for r in item_rows]
            if any(math.isnan(v) for v in values):
                raise ValueError(f"metric {metric!r}, item {item_id!r}: value is NaN")
            output = next((r.output for r in item_rows if r.output is not None), None)
            per_item[item_id] = _ItemAgg(
                value=math.fsum(values) / len(values),
                pass_fraction=sum(r.passed for r in item_rows) / len(item_rows),
                output=output,
            )
        out[metric] = per_item
    return out


def _ordered_metrics(baseline: RunResults, candidate: RunResults) -> list[str]:
    seen: dict[str, None] = {}
    for row in (*baseline.rows, *candidate.rows):
        seen.setdefault(row.metric, None)
    return list(seen)


def compare(
    baseline: RunResults,
    candidate: RunResults,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Pair ``candidate`` with ``baseline`` item by item and compute per-metric statistics.

    Metrics appear in order of first appearance (baseline rows first). A metric with no item
    in common between the runs gets no :class:`MetricComparison`; its items are unpaired.
    Raises :class:`ValueError` when no metric has a single paired item.
    """
    base = _aggregate(baseline.rows)
    cand = _aggregate(candidate.rows)
    unpaired: set[str] = set()
    metrics: list[MetricComparison] = []
    for metric in _ordered_metrics(baseline, candidate):
        b_items = base.get(metric, {})
        c_items = cand.get(metric, {})
        unpaired.update(b_items.keys() ^ c_items.keys())
        paired = sorted(b_items.keys() & c_items.keys())
        if not paired:
            continue
        metrics.append(_compare_metric(metric, paired, b_items, c_items, resamples, seed))
    if not metrics:
        raise ValueError(
            f"runs {baseline.run_id!r} and {candidate.run_id!r} have no item scored on the "
            "same metric; nothing to compare"
        )
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        metrics=tuple(metrics),
        unpaired_items=tuple(sorted(unpaired)),
    )


def _compare_metric(
    metric: str,
    paired: list[str],
    b_items: dict[str, _ItemAgg],
    c_items: dict[str, _ItemAgg],
    resamples: int,
    seed: int,
) -> MetricComparison:
    n = len(paired)
    b_vals = [b_items[i].value for i in paired]
    c_vals = [c_items[i].value for i in paired]
    deltas = [c - b for b, c in zip(b_vals, c_vals, strict=True)]
    delta, ci_low, ci_high = paired_bootstrap_ci(deltas, resamples=resamples, seed=seed)
    b_pass = [b_items[i].pass_fraction >= 0.5 for i in paired]
    c_pass = [c_items[i].pass_fraction >= 0.5 for i in paired]
    mc_b = sum(bp and not cp for bp, cp in zip(b_pass, c_pass, strict=True))
    mc_c = sum(cp and not bp for bp, cp in zip(b_pass, c_pass, strict=True))
    sd = statistics.stdev(deltas) if n >= 2 else math.nan
    mde = minimum_detectable_effect(sd, n) if n >= 2 else math.inf
    regressed = sorted(
        (i for i, d in zip(paired, deltas, strict=True) if d < 0),
        key=lambda i: (c_items[i].value - b_items[i].value, i),
    )[:WORST_ITEMS]
    worst = tuple(
        ItemDelta(
            item_id=i,
            baseline=b_items[i].value,
            candidate=c_items[i].value,
            delta=c_items[i].value - b_items[i].value,
            baseline_output=b_items[i].output,
            candidate_output=c_items[i].output,
        )
        for i in regressed
    )
    return MetricComparison(
        metric=metric,
        n_items=n,
        baseline_mean=math.fsum(b_vals) / n,
        candidate_mean=math.fsum(c_vals) / n,
        delta=delta,
        ci_low=ci_low,
        ci_high=ci_high,
        baseline_pass_rate=sum(b_pass) / n,
        candidate_pass_rate=sum(c_pass) / n,
        mcnemar_b=mc_b,
        mcnemar_c=mc_c,
        mcnemar_p=mcnemar_exact(mc_b, mc_c) if mc_b + mc_c else None,
        mde=mde,
        worst_items=worst,
    )
