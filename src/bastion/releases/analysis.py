"""Canary analysis: the candidate's arm against the stable arm over the same window.

Both arms are read from the stored gateway spans of the rollout (its id is on every span it
routed) since the current step began. Guard metrics: error rate (fails when it exceeds stable's
by more than ``error_rate_points`` *and* the difference is significant — one-sided
two-proportion z-test at 95% — so one unlucky error among twenty requests does not roll back a
good release), p99 latency and p99 time to first token (ratio, ignoring differences below
``latency_floor_ms``), and cost per request (ratio). Too few requests on either arm is
``wait``: a candidate is never promoted, nor condemned, blind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from bastion.evals.from_traces import parse_output
from bastion.releases.model import RolloutPolicy
from bastion.store.schema import spans

__all__ = [
    "ArmStats",
    "Sample",
    "Verdict",
    "agreement",
    "arm_names",
    "fetch_samples",
    "judge",
    "score_samples",
    "stats",
]

Outcome = Literal["pass", "fail", "wait"]


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


@dataclass(frozen=True, slots=True)
class ArmStats:
    requests: int
    errors: int
    error_rate: float
    p99_ms: float | None
    ttft_p99_ms: float | None
    cost_per_request: float | None
    quality: float | None = None  # mean quality score of the scored answers
    scored: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_quantile": 0.99 if self.requests - self.errors >= 100 else 0.9,
            "quality": self.quality,
            "scored": self.scored,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_ms": self.p99_ms,
            "ttft_p99_ms": self.ttft_p99_ms,
            "cost_per_request": self.cost_per_request,
        }


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
            "stable": self.stable.to_dict(),
            "candidate": self.candidate.to_dict(),
            "checks": self.checks,
        }

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def arm_names(strategy: str) -> tuple[str, str]:
    """(stable arm, candidate arm) as recorded on spans for a strategy."""
    return {"ab": ("a", "b"), "shadow": ("stable", "shadow")}.get(strategy, ("stable", "canary"))


def _tail(values: Sequence[float]) -> float | None:
    """Nearest-rank p99, or p90 below 100 values (the p99 of fewer is just their maximum,
    which one scheduling hiccup decides)."""
    if not values:
        return None
    ordered = sorted(values)
    q = 0.99 if len(ordered) >= 100 else 0.9
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats(samples: Sequence[Sample]) -> ArmStats:
    n = len(samples)
    errors = sum(1 for s in samples if s.error)
    ok = [s for s in samples if not s.error]
    costs = [s.cost_usd for s in samples if s.cost_usd is not None]
    scores = [s.score for s in samples if s.score is not None]
    return ArmStats(
        requests=n,
        errors=errors,
        error_rate=errors / n if n else 0.0,
        p99_ms=_tail([s.latency_ms for s in ok]),
        ttft_p99_ms=_tail([s.ttft_ms for s in ok if s.ttft_ms is not None]),
        cost_per_request=sum(costs) / len(costs) if costs else None,
        quality=sum(scores) / len(scores) if scores else None,
        scored=len(scores),
    )


def _z(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float:
    """One-sided z of "b's error rate is above a's" (pooled two-proportion test)."""
    pooled = (errors_a + errors_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 0.0
    return (errors_b / n_b - errors_a / n_a) / math.sqrt(variance)


def _ratio_check(
    name: str, stable: float | None, candidate: float | None, ratio: float, floor: float
) -> tuple[str | None, dict[str, Any]]:
    if stable is None or candidate is None:
        return None, {"metric": name, "skipped": "no data on one arm"}
    limit = max(stable * ratio, stable + floor)
    check = {"metric": name, "stable": stable, "candidate": candidate, "limit": limit}
    if candidate > limit:
        return f"{name} {candidate:.1f} ms > limit {limit:.1f} ms (stable {stable:.1f} ms)", check
    return None, check


def _quality_check(
    stable: ArmStats, candidate: ArmStats, policy: RolloutPolicy, checks: dict[str, Any]
) -> str | None:
    # Scored answers are a sample: the same floor as requests, halved (errors are not scored).
    need = max(1, policy.min_requests // 2)
    sq, cq = stable.quality, candidate.quality
    if sq is None or cq is None or stable.scored < need or candidate.scored < need:
        checks["quality"] = {"skipped": f"fewer than {need} scored answers on an arm"}
        return None
    limit = sq * (1 - policy.thresholds.quality_drop)
    checks["quality"] = {"stable": sq, "candidate": cq, "limit": limit}
    if cq < limit:
        drop = policy.thresholds.quality_drop
        return f"quality {cq:.3f} < stable {sq:.3f} - {drop:.0%} (on {candidate.scored} answers)"
    return None


def judge(
    stable_samples: Sequence[Sample],
    candidate_samples: Sequence[Sample],
    policy: RolloutPolicy,
    *,
    baked: bool,
) -> Verdict:
    """``fail`` on any guard breach with enough traffic; ``pass`` once baked; else ``wait``."""
    stable, candidate = stats(stable_samples), stats(candidate_samples)
    t = policy.thresholds
    need = policy.min_requests
    if candidate.requests < need or stable.requests < need:
        reason = (
            f"too little traffic to judge: candidate {candidate.requests}, stable "
            f"{stable.requests} requests (need {need} each)"
        )
        return Verdict("wait", (reason,), stable, candidate)
    failures: list[str] = []
    checks: dict[str, Any] = {}
    z = _z(stable.errors, stable.requests, candidate.errors, candidate.requests)
    points = (candidate.error_rate - stable.error_rate) * 100
    checks["error_rate"] = {
        "stable": stable.error_rate,
        "candidate": candidate.error_rate,
        "points": points,
        "z": z,
        # one-sided: the chance of a difference this large were the arms equally reliable
        "p_value": 0.5 * math.erfc(z / math.sqrt(2)),
        "limit_points": t.error_rate_points,
    }
    if points > t.error_rate_points and z > 1.645:
        failures.append(
            f"error rate {candidate.error_rate:.1%} vs stable {stable.error_rate:.1%} "
            f"(+{points:.1f} points > {t.error_rate_points:g})"
        )
    for name, s, c, ratio in (
        ("p99 latency", stable.p99_ms, candidate.p99_ms, t.p99_ratio),
        ("p99 TTFT", stable.ttft_p99_ms, candidate.ttft_p99_ms, t.ttft_ratio),
    ):
        failure, check = _ratio_check(name, s, c, ratio, t.latency_floor_ms)
        checks[name] = check
        if failure:
            failures.append(failure)
    sc, cc = stable.cost_per_request, candidate.cost_per_request
    if sc is not None and cc is not None and sc > 0:
        checks["cost"] = {"stable": sc, "candidate": cc, "limit": sc * t.cost_ratio}
        if cc > sc * t.cost_ratio:
            failures.append(f"cost per request ${cc:.6f} > {t.cost_ratio:g} x stable ${sc:.6f}")
    if policy.quality is not None:
        failure = _quality_check(stable, candidate, policy, checks)
        if failure:
            failures.append(failure)
    if failures:
        return Verdict("fail", tuple(failures), stable, candidate, checks)
    if not baked:
        return Verdict("wait", ("healthy so far; baking",), stable, candidate, checks)
    return Verdict("pass", ("every guard metric within its threshold",), stable, candidate, checks)


def fetch_samples(
    conn: sa.Connection,
    project_id: int,
    rollout_id: str,
    release_ids: Sequence[str],
    since_ns: int,
    *,
    limit: int,
    outputs_sample: float | None = None,
) -> list[Sample]:
    """The rollout's routed requests since ``since_ns`` (newest ``limit`` per release); with
    ``outputs_sample``, the answers of that fraction of them (chosen by span id) too."""
    out: list[Sample] = []
    marker = rollout_id.encode()
    for release_id in dict.fromkeys(release_ids):
        rows = conn.execute(
            sa.select(
                spans.c.span_id,
                spans.c.trace_id,
                # answers are read only when a quality scorer needs them
                (spans.c.output if outputs_sample is not None else sa.null()).label("output"),
                spans.c.attributes,
                spans.c.error_class,
                spans.c.latency_ms,
                spans.c.ttft_ms,
                spans.c.cost_usd,
            )
            .where(
                spans.c.project_id == project_id,
                spans.c.release_id == release_id,
                spans.c.start_ns >= since_ns,
            )
            .order_by(spans.c.start_ns.desc())
            .limit(limit)
        )
        for row in rows:
            raw = row.attributes.encode() if isinstance(row.attributes, str) else row.attributes
            if marker not in raw:  # spans of other routes sharing the release: skip the parse
                continue
            attributes = orjson.loads(raw)
            if attributes.get("bastion.release.rollout") != rollout_id:
                continue
            out.append(
                Sample(
                    arm=str(attributes.get("bastion.release.arm", "")),
                    trace_id=row.trace_id,
                    shadow_of=attributes.get("bastion.release.shadow_of"),
                    error=row.error_class is not None,
                    latency_ms=float(row.latency_ms),
                    ttft_ms=float(row.ttft_ms) if row.ttft_ms is not None else None,
                    cost_usd=float(row.cost_usd) if row.cost_usd is not None else None,
                    output=_sampled_output(row, outputs_sample),
                )
            )
    return out


def _sampled_output(row: Any, rate: float | None) -> str | None:
    if rate is None or row.error_class is not None or row.output is None:
        return None
    point = int.from_bytes(hashlib.sha256(row.span_id.encode()).digest()[:8], "big") / 2**64
    if point >= rate:
        return None
    return parse_output(row.output)


def score_samples(spec: Mapping[str, Any], samples: Sequence[Sample]) -> list[Sample]:
    """``samples`` with the quality scorer's value on each one that has an answer.

    Runs the (async) scorer on a private event loop: the controller calls this on a worker
    thread. Meant for deterministic, reference-free scorers (regex, is-json, contains, ...).
    """
    from bastion.evals.datasets import Item
    from bastion.evals.scorers import Output, make_scorer

    scorer = make_scorer(spec)
    item = Item(id="live", vars={})
    todo = [i for i, s in enumerate(samples) if s.output is not None]

    async def run() -> list[float]:
        scores = [scorer.score(Output(samples[i].output or ""), item) for i in todo]
        return [score.value for score in await asyncio.gather(*scores)]

    values = asyncio.run(run()) if todo else []
    out = list(samples)
    for index, value in zip(todo, values, strict=True):
        out[index] = dataclasses.replace(out[index], score=value)
    return out


def agreement(samples: Sequence[Sample]) -> dict[str, Any] | None:
    """Shadow rollouts: how alike each copy's answer is to the answer the user got
    (normalised Levenshtein similarity, 1 = identical), over the pairs both answered."""
    from bastion.evals.scorers.deterministic import levenshtein_distance

    served = {s.trace_id: s.output for s in samples if s.shadow_of is None and s.output}
    similarities = []
    for s in samples:
        primary = served.get(s.shadow_of) if s.shadow_of is not None else None
        if primary is None or not s.output:
            continue
        a, b = primary.strip(), s.output.strip()
        longest = max(len(a), len(b))
        similarities.append(1.0 if longest == 0 else 1 - levenshtein_distance(a, b) / longest)
    if not similarities:
        return None
    mean = sum(similarities) / len(similarities)
    return {"pairs": len(similarities), "mean_similarity": mean}
