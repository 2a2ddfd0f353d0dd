"""Sparse log-bucket histograms for latency roll-ups.

A value ``v`` (milliseconds) falls in bucket ``i = floor(log(v / MIN_MS) / log(GAMMA)) + 1``
(bucket 0 holds everything below ``MIN_MS``). With ``GAMMA = 1.08`` a quantile read back from
the buckets is within 4% of the exact value, whatever the distribution, and histograms of any
two periods merge by adding counts: what makes percentiles over pre-aggregated hours possible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import orjson

__all__ = ["GAMMA", "MIN_MS", "bucket_of", "decode", "encode", "merge_encoded", "quantiles"]

GAMMA = 1.08
MIN_MS = 0.01
_LOG_GAMMA = math.log(GAMMA)


def bucket_of(value_ms: float) -> int:
    if value_ms < MIN_MS:
        return 0
    return int(math.log(value_ms / MIN_MS) / _LOG_GAMMA) + 1


def _bucket_value(bucket: int) -> float:
    """Representative value of a bucket: its bounds' midpoint (relative error <= (GAMMA-1)/2)."""
    if bucket <= 0:
        return 0.0
    low = MIN_MS * GAMMA ** (bucket - 1)
    return low * (1 + GAMMA) / 2


def encode(counts: Mapping[int, int]) -> str:
    return orjson.dumps({str(k): v for k, v in counts.items() if v}).decode()


def decode(text: str | None) -> dict[int, int]:
    if not text:
        return {}
    return {int(k): int(v) for k, v in orjson.loads(text).items()}


def merge_encoded(a: str | None, b: str | None) -> str:
    """Add two encoded histograms; the SQL function ``bastion_hist_merge`` on SQLite."""
    merged = decode(a)
    for k, v in decode(b).items():
        merged[k] = merged.get(k, 0) + v
    return encode(merged)


def add_into(target: dict[int, int], source: Mapping[int, int]) -> None:
    for k, v in source.items():
        target[k] = target.get(k, 0) + v


def quantiles(counts: Mapping[int, int], qs: Iterable[float]) -> list[float | None]:
    """Estimate quantiles (0..1) from bucket counts; ``None`` for an empty histogram."""
    total = sum(counts.values())
    qs = list(qs)
    if total == 0:
        return [None for _ in qs]
    ordered = sorted(counts.items())
    out: list[float | None] = []
    for q in qs:
        rank = q * (total - 1)
        seen = 0
        value = _bucket_value(ordered[-1][0])
        for bucket, count in ordered:
            seen += count
            if seen > rank:
                value = _bucket_value(bucket)
                break
        out.append(round(value, 3))
    return out
