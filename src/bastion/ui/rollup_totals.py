"""Totals per value of one roll-up dimension over a range, read in whole hours: for ranking
(top spenders, the groups a chart draws), budget usage and the users table.

:func:`bastion.store.queries.metrics_summary` gives exact figures for every group of a range,
which by user over 30 days means tens of thousands of (user, day) cells, each with its
histograms turned into percentiles. The pages here need far less: additive counters per value
(one SQL aggregate per segment, no histogram read) and, for a few chosen values only, their
latency histograms. In hours: the range's last partial hour counts whole (nothing lies past
now, so a range ending now is exact, as a budget's period is), its first partial hour not at
all, which a ranking does not notice; the charts themselves stay exact.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.store import histogram
from bastion.store.aggregates import DAY_SUFFIX, iter_dumped
from bastion.store.schema import span_rollup_deltas, span_rollups

__all__ = ["Totals", "rollup_totals"]

_HOUR = 3600
_DAY = 86_400
_QS = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class Totals:
    """Additive counters of one value, and its latency histogram when asked for."""

    count: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, n: int, errors: int, tin: int, tout: int, cost: float) -> None:
        self.count += int(n or 0)
        self.errors += int(errors or 0)
        self.input_tokens += int(tin or 0)
        self.output_tokens += int(tout or 0)
        self.cost_usd += float(cost or 0.0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.count if self.count else None

    def latency_ms(self) -> list[float | None]:
        """p50, p95 and p99 latency (empty histogram: None)."""
        return histogram.quantiles(self.latency, _QS)


def _hours(start_s: int, end_s: int) -> tuple[int, int]:
    """The hours read: from the first whole one to the end of the one holding ``end_s``."""
    return -(-start_s // _HOUR) * _HOUR, -(-end_s // _HOUR) * _HOUR


def _segments(dimension: str, start_s: int, end_s: int) -> list[tuple[str, int, int]]:
    """Day rows for the whole days of the range, hourly rows for the hours around them."""
    first_hour, end_hour = _hours(start_s, end_s)
    first_day = -(-first_hour // _DAY) * _DAY
    end_day = end_hour // _DAY * _DAY
    if first_day >= end_day:
        first_day = end_day = end_hour
    parts = [
        (dimension, first_hour, first_day),
        (dimension + DAY_SUFFIX, first_day, end_day),
        (dimension, end_day, end_hour),
    ]
    return [part for part in parts if part[1] < part[2]]


def rollup_totals(
    conn: sa.Connection,
    project_id: int,
    dimension: str,
    start_s: int,
    end_s: int,
    *,
    values: Collection[str] | None = None,
    latency: bool = False,
) -> dict[str, Totals]:
    """Totals per value ('' for "not set") of ``dimension`` over the hours of
    ``[start_s, end_s)`` (see the module notes): roll-ups plus the batches not folded into
    them yet; only ``values`` when given; with latency histograms when ``latency``."""
    r = span_rollups.c
    out: dict[str, Totals] = {}
    if values is not None and not values:
        return out
    for row_dimension, low, high in _segments(dimension, start_s, end_s):
        conds = [r.project_id == project_id, r.dimension == row_dimension]
        conds += [r.hour >= low, r.hour < high]
        if values is not None:
            conds.append(r.value.in_(sorted(values)))
        counters = (r.span_count, r.error_count, r.input_tokens, r.output_tokens, r.cost_usd)
        if latency:
            stmt = sa.select(r.value, *counters, r.latency_hist).where(*conds)
            for value, n, errors, tin, tout, cost, hist in conn.execute(stmt):
                totals = out.setdefault(value, Totals())
                totals.add(n, errors, tin, tout, cost)
                for bucket, seen in orjson.loads(hist).items():
                    b = int(bucket)
                    totals.latency[b] = totals.latency.get(b, 0) + seen
        else:
            sums: list[sa.ColumnElement[Any]] = [sa.func.sum(c) for c in counters]
            summed = sa.select(r.value, *sums).where(*conds).group_by(r.value)
            for value, n, errors, tin, tout, cost in conn.execute(summed):
                out.setdefault(value, Totals()).add(n, errors, tin, tout, cost)
    _add_pending(conn, project_id, dimension, start_s, end_s, values, out)
    return out


def _add_pending(
    conn: sa.Connection,
    project_id: int,
    dimension: str,
    start_s: int,
    end_s: int,
    values: Collection[str] | None,
    out: dict[str, Totals],
) -> None:
    """The deferred batches' entries of ``dimension`` in the hours read."""
    first_hour, end_hour = _hours(start_s, end_s)
    d = span_rollup_deltas.c
    for (document,) in conn.execute(sa.select(d.totals).where(d.project_id == project_id)):
        for name, hour, value, n, errors, tin, tout, _c, cost, _u, lat, _t in iter_dumped(document):
            if name != dimension or not first_hour <= hour < end_hour:
                continue
            if values is not None and value not in values:
                continue
            totals = out.setdefault(value, Totals())
            totals.add(n, errors, tin, tout, cost)
            histogram.add_into(totals.latency, lat)
