"""The analysis verdict: a candidate's arm against the stable arm, metric by metric.

**What is compared: upstream calls.** A request answered from the response cache (exact or
semantic) never reached the release's model, and a request refused by the gateway's own rate
limits or budgets never reached any model; averaging either in would blend the cache's and the
limits' behaviour into the release's (an arm with more repeated inputs would look cheaper and
faster, and hits would dilute its errors). Both are counted per arm — ``cache_hits`` (with the
hit rate) and ``refused`` — and every guard metric is computed over the remaining requests,
the upstream calls.

**When a metric fails**: its threshold is breached *and* a one-sided test at 5% says the
difference is not noise (:mod:`bastion.releases.significance`):

- error rate: above stable's by more than ``error_rate_points``; two-proportion z-test;
- latency and TTFT of successful calls: the tail exceeds the limit ``max(stable's tail x
  ratio, stable's tail + latency_floor_ms)``; Fisher's exact test on how many requests of
  each arm are beyond that limit. The tail is the p99 when both arms have 100 samples or more,
  else the p90 (the p99 of fewer is their maximum, which one stall decides), the same quantile
  on both arms and named as such (``p90 latency``);
- cost per upstream call (mean): above stable's x ``cost_ratio``; Welch z-test of the means
  against that threshold;
- quality (mean score of the sampled answers): below stable's by more than ``quality_drop``;
  Welch z-test of the means against that threshold.

A breach that is not significant yet can neither fail nor pass: the verdict waits for more
calls, which either make it significant or make it go away (one slow request among eight is
the p90 of eight, but no evidence).

**Minimum sample**: fewer than ``min_requests`` upstream calls on either arm is ``wait``; a
metric with fewer than ``min_requests`` samples on an arm (half that for quality scores, which
are a sample) can neither fail nor pass — the verdict waits for it — and a metric measured on
neither arm (no prices, say) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.releases.model import RolloutPolicy, Thresholds
from bastion.releases.significance import (
    TestResult,
    fisher_exact,
    two_proportion_z,
    welch_margin_z,
)

__all__ = ["ArmStats", "Outcome", "Sample", "Verdict", "judge", "stats"]

Outcome = Literal["pass", "fail", "wait"]
CheckStatus = Literal["pass", "fail", "wait", "skipped"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One routed request as the analysis sees it."""

    arm: str
    error: bool
    latency_ms: float
    ttft_ms: float | None
    cost_usd: float | None
    output: str | None = None  # the answer, for sampled spans when a quality scorer is set
    score: float | None = None  # the quality scorer's value for it, once scored
    trace_id: str = ""
    shadow_of: str | None = None  # a shadow copy: the trace id of the request it copied
    cache_hit: bool = False  # answered from the response cache: no upstream call
    refused: bool = False  # refused by the gateway's rate limits or budgets: no upstream call

    @property
    def upstream(self) -> bool:
        return not self.cache_hit and not self.refused


def _quantile_for(n: int) -> float:
    return 0.99 if n >= 100 else 0.9


def _nearest_rank(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile ``q`` of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _tail(values: Sequence[float], q: float) -> float | None:
    return _nearest_rank(values, q) if values else None


def _label(q: float) -> str:
    return f"p{round(q * 100)}"


@dataclass(frozen=True, slots=True)
class ArmStats:
    """One arm over the window. Error rate, latency, TTFT, cost and quality are over its
    upstream calls only; cache hits and refusals are counted apart."""

    requests: int
    cache_hits: int
    refused: int
    upstream: int
    errors: int
    error_rate: float
    latency_ms: float | None  # tail latency of successful upstream calls (latency_quantile)
    ttft_ms: float | None  # tail TTFT of successful upstream calls (ttft_quantile)
    cost_per_request: float | None  # mean cost per upstream call that has a price
    latency_quantile: float = 0.9
    ttft_quantile: float = 0.9
    quality: float | None = None  # mean quality score of the scored upstream answers
    scored: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "hit_rate": self.hit_rate,
            "refused": self.refused,
            "upstream": self.upstream,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_quantile": _label(self.latency_quantile),
            "latency_ms": self.latency_ms,
            "ttft_quantile": _label(self.ttft_quantile),
            "ttft_ms": self.ttft_ms,
            "cost_per_request": self.cost_per_request,
            "quality": self.quality,
            "scored": self.scored,
        }


@dataclass(frozen=True, slots=True)
class _Values:
    """An arm's compared values: latency and TTFT of successful upstream calls, the cost of
    each upstream call with a price, and the scores of scored upstream answers."""

    latencies: list[float]
    ttfts: list[float]
    costs: list[float]
    scores: list[float]

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> _Values:
        upstream = [s for s in samples if s.upstream]
        ok = [s for s in upstream if not s.error]
        return cls(
            latencies=[s.latency_ms for s in ok],
            ttfts=[s.ttft_ms for s in ok if s.ttft_ms is not None],
            costs=[s.cost_usd for s in upstream if s.cost_usd is not None],
            scores=[s.score for s in upstream if s.score is not None],
        )


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def stats(
    samples: Sequence[Sample],
    latency_quantile: float | None = None,
    ttft_quantile: float | None = None,
) -> ArmStats:
    """One arm's figures; the tail quantiles default to what its own sample size allows."""
    upstream = [s for s in samples if s.upstream]
    errors = sum(1 for s in upstream if s.error)
    values = _Values.of(samples)
    lq = latency_quantile if latency_quantile is not None else _quantile_for(len(values.latencies))
    tq = ttft_quantile if ttft_quantile is not None else _quantile_for(len(values.ttfts))
    return ArmStats(
        requests=len(samples),
        cache_hits=sum(1 for s in samples if s.cache_hit),
        refused=sum(1 for s in samples if s.refused),
        upstream=len(upstream),
        errors=errors,
        error_rate=errors / len(upstream) if upstream else 0.0,
        latency_ms=_tail(values.latencies, lq),
        ttft_ms=_tail(values.ttfts, tq),
        cost_per_request=_mean(values.costs),
        latency_quantile=lq,
        ttft_quantile=tq,
        quality=_mean(values.scores),
        scored=len(values.scores),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reasons: tuple[str, ...]
    stable: ArmStats
    candidate: ArmStats
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "compared": "upstream calls (cache hits and refusals counted apart)",
            "stable": self.stable.to_dict(),
            "candidate": self.candidate.to_dict(),
            "checks": self.checks,
        }

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True, slots=True)
class _Check:
    status: CheckStatus
    detail: dict[str, Any]
    failure: str | None = None


def _sized(
    metric: str, stable: Sequence[float], candidate: Sequence[float], need: int
) -> _Check | None:
    """``skipped``/``wait`` when the metric cannot be tested yet, else None."""
    if not stable and not candidate:
        return _Check("skipped", {"metric": metric, "status": "skipped", "why": "not measured"})
    if not stable or not candidate:
        why = "measured on one arm only"
        return _Check("skipped", {"metric": metric, "status": "skipped", "why": why})
    if min(len(stable), len(candidate)) < need:
        why = (
            f"too few samples: stable {len(stable)}, candidate {len(candidate)} (need {need} each)"
        )
        return _Check("wait", {"metric": metric, "status": "wait", "why": why})
    return None


def _decide(
    metric: str, breach: bool, test: TestResult, detail: dict[str, Any], message: str
) -> _Check:
    # A breach that is not (yet) significant proves nothing either way: wait for more calls,
    # which either make it significant or make it go away.
    status: CheckStatus = "pass"
    if breach:
        status = "fail" if test.significant else "wait"
    full = {"metric": metric, "status": status, "breach": breach, **detail, **test.to_dict()}
    if status == "wait":
        full["why"] = "threshold breached but not significant yet"
    failure = f"{message} ({test.test}, p = {test.p_value:.3g})" if status == "fail" else None
    return _Check(status, full, failure)


def _error_check(stable: ArmStats, candidate: ArmStats, t: Thresholds) -> _Check:
    test = two_proportion_z(stable.errors, stable.upstream, candidate.errors, candidate.upstream)
    points = (candidate.error_rate - stable.error_rate) * 100
    detail = {
        "stable": stable.error_rate,
        "candidate": candidate.error_rate,
        "points": points,
        "limit_points": t.error_rate_points,
    }
    message = (
        f"error rate {candidate.error_rate:.1%} vs stable {stable.error_rate:.1%} "
        f"(+{points:.1f} points > {t.error_rate_points:g}, on {candidate.upstream} upstream calls)"
    )
    return _decide("error rate", points > t.error_rate_points, test, detail, message)


def _tail_check(
    name: str,
    stable: Sequence[float],
    candidate: Sequence[float],
    ratio: float,
    t: Thresholds,
    need: int,
) -> _Check:
    q = _quantile_for(min(len(stable), len(candidate)))
    metric = f"{_label(q)} {name}"
    early = _sized(metric, stable, candidate, need)
    if early is not None:
        return early
    s, c = _nearest_rank(stable, q), _nearest_rank(candidate, q)
    limit = max(s * ratio, s + t.latency_floor_ms)
    beyond_s = sum(1 for v in stable if v > limit)
    beyond_c = sum(1 for v in candidate if v > limit)
    detail = {
        "quantile": _label(q),
        "stable": s,
        "candidate": c,
        "limit": limit,
        "beyond_limit_stable": beyond_s,
        "beyond_limit_candidate": beyond_c,
    }
    message = (
        f"{metric} {c:.1f} ms > limit {limit:.1f} ms (stable {s:.1f} ms; {beyond_c} of "
        f"{len(candidate)} requests beyond it, stable {beyond_s} of {len(stable)})"
    )
    test = fisher_exact(beyond_s, len(stable), beyond_c, len(candidate))
    return _decide(metric, c > limit, test, detail, message)


def _cost_check(
    stable: Sequence[float], candidate: Sequence[float], t: Thresholds, need: int
) -> _Check:
    metric = "cost per upstream call"
    early = _sized(metric, stable, candidate, need)
    if early is not None:
        return early
    s, c = math.fsum(stable) / len(stable), math.fsum(candidate) / len(candidate)
    limit = s * t.cost_ratio
    detail = {"stable": s, "candidate": c, "limit": limit}
    message = f"cost per upstream call ${c:.6f} > {t.cost_ratio:g} x stable ${s:.6f}"
    test = welch_margin_z(stable, candidate, t.cost_ratio)
    return _decide(metric, s > 0 and c > limit, test, detail, message)


def _quality_check(
    stable: Sequence[float], candidate: Sequence[float], t: Thresholds, need: int
) -> _Check:
    metric = "quality"
    early = _sized(metric, stable, candidate, need)
    if early is not None:
        return early
    s, c = math.fsum(stable) / len(stable), math.fsum(candidate) / len(candidate)
    limit = s * (1 - t.quality_drop)
    detail = {"stable": s, "candidate": c, "limit": limit}
    message = (
        f"quality {c:.3f} < stable {s:.3f} - {t.quality_drop:.0%} (on {len(candidate)} answers)"
    )
    test = welch_margin_z(stable, candidate, 1 - t.quality_drop, lower=True)
    return _decide(metric, c < limit, test, detail, message)


def _checks(stable: _Values, candidate: _Values, policy: RolloutPolicy) -> dict[str, _Check]:
    t, need = policy.thresholds, policy.min_requests
    checks = {
        "latency": _tail_check(
            "latency", stable.latencies, candidate.latencies, t.p99_ratio, t, need
        ),
        "ttft": _tail_check("TTFT", stable.ttfts, candidate.ttfts, t.ttft_ratio, t, need),
        "cost": _cost_check(stable.costs, candidate.costs, t, need),
    }
    if policy.quality is not None:
        # Scored answers are a sample: the same floor as requests, halved (errors are not scored).
        quality_need = max(1, need // 2)
        checks["quality"] = _quality_check(stable.scores, candidate.scores, t, quality_need)
    return checks


def judge(
    stable_samples: Sequence[Sample],
    candidate_samples: Sequence[Sample],
    policy: RolloutPolicy,
    *,
    baked: bool,
) -> Verdict:
    """``fail`` on any significant guard breach with enough upstream calls; ``pass`` once baked
    with every metric tested; else ``wait``."""
    s_values, c_values = _Values.of(stable_samples), _Values.of(candidate_samples)
    # Both arms' tails at the same quantile, so the figures shown are comparable.
    lq = _quantile_for(min(len(s_values.latencies), len(c_values.latencies)))
    tq = _quantile_for(min(len(s_values.ttfts), len(c_values.ttfts)))
    stable, candidate = stats(stable_samples, lq, tq), stats(candidate_samples, lq, tq)
    need = policy.min_requests
    if candidate.upstream < need or stable.upstream < need:
        reason = (
            f"too few upstream calls to judge: candidate {candidate.upstream}, stable "
            f"{stable.upstream} (need {need} each; cache hits and refusals are not compared: "
            f"candidate {candidate.cache_hits} hits, {candidate.refused} refused; stable "
            f"{stable.cache_hits} hits, {stable.refused} refused)"
        )
        return Verdict("wait", (reason,), stable, candidate)
    checks = {"error_rate": _error_check(stable, candidate, policy.thresholds)}
    checks.update(_checks(s_values, c_values, policy))
    details = {name: check.detail for name, check in checks.items()}
    failures = tuple(c.failure for c in checks.values() if c.failure is not None)
    if failures:
        return Verdict("fail", failures, stable, candidate, details)
    waiting = [f"{c.detail['metric']} ({c.detail['why']})" for c in checks.values()
               if c.status == "wait"]  # fmt: skip
    if waiting:
        reason = f"no significant breach so far; waiting on {'; '.join(waiting)}"
        return Verdict("wait", (reason,), stable, candidate, details)
    if not baked:
        return Verdict("wait", ("healthy so far; baking",), stable, candidate, details)
    reason = "no guard metric significantly worse than stable"
    return Verdict("pass", (reason,), stable, candidate, details)
