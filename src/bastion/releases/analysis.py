"""Canary analysis: reading both arms of a rollout from the stored spans, and scoring them.

Both arms are read from the stored gateway spans of the rollout (its id is on every span it
routed) since the current step began; each span says whether the response cache answered it
(``bastion.cache.status``) and whether the gateway's own rate limits or budgets refused it, so
the verdict (:mod:`bastion.releases.verdict`) compares the arms on upstream calls only and
counts hits and refusals apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.evals.from_traces import parse_output
from bastion.releases.verdict import ArmStats, Sample, Verdict, judge, stats
from bastion.store.schema import spans
from bastion.tracing.attributes import CACHE_STATUS, RELEASE_ARM, RELEASE_ROLLOUT, RELEASE_SHADOW_OF

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

# Error classes of the gateway's own admission (rate limits, budgets spent): no model was
# called, and the release had no part in it. (A budget refusing a model it cannot price,
# `budget_unpriced`, is the release's doing: its model choice; that stays an error.)
_REFUSALS = frozenset({"rate_limited", "budget_exceeded"})


def arm_names(strategy: str) -> tuple[str, str]:
    """(stable arm, candidate arm) as recorded on spans for a strategy."""
    return {"ab": ("a", "b"), "shadow": ("stable", "shadow")}.get(strategy, ("stable", "canary"))


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
            if attributes.get(RELEASE_ROLLOUT) != rollout_id:
                continue
            out.append(
                Sample(
                    arm=str(attributes.get(RELEASE_ARM, "")),
                    trace_id=row.trace_id,
                    shadow_of=attributes.get(RELEASE_SHADOW_OF),
                    error=row.error_class is not None,
                    latency_ms=float(row.latency_ms),
                    ttft_ms=float(row.ttft_ms) if row.ttft_ms is not None else None,
                    cost_usd=float(row.cost_usd) if row.cost_usd is not None else None,
                    output=_sampled_output(row, outputs_sample),
                    cache_hit=attributes.get(CACHE_STATUS) == "hit",
                    refused=row.error_class in _REFUSALS,
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
