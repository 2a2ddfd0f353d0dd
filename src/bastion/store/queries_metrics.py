"""LLM call metrics over a time range, grouped by a dimension and/or by day or hour.

The public names are re-exported by :mod:`bastion.store.queries`; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field

from bastion.store import histogram
from bastion.store.aggregates import DAY_SUFFIX, ROLLUP_COUNTERS, iter_dumped
from bastion.store.queries_common import (
    Bind,
    TraceFilter,
    connect,
    is_counted,
    is_llm,
    ns_to_datetime,
    span_conditions,
)
from bastion.store.schema import span_rollup_deltas, span_rollups, spans
from bastion.tracing.model import StatusCode

__all__ = [
    "GROUP_BY_KEYS",
    "MetricsAccumulator",
    "MetricsGroup",
    "MetricsSummary",
    "metrics_summary",
]

_DIMENSIONS = ("model", "feature", "user", "tenant", "provider")
_TIME_STEPS = {"day": 86_400, "hour": 3_600}
GROUP_BY_KEYS = (*_DIMENSIONS, *_TIME_STEPS)
_HOUR_NS = 3_600 * 1_000_000_000
_DAY_S = _TIME_STEPS["day"]
_ERROR = int(StatusCode.ERROR)
_VALUE_MAX = 200  # roll-up values are cut to the column's length; raw keys are cut alike
# Filter fields that are also roll-up dimensions: one of them alone can still use roll-ups.
_ROLLUP_FILTERS = {
    "feature": "feature",
    "user_id": "user",
    "tenant": "tenant",
    "provider": "provider",
}
_RAW_COLUMNS = {"feature": "feature", "user": "user_id", "tenant": "tenant", "provider": "provider"}
_QS = (0.5, 0.95, 0.99)


class MetricsGroup(BaseModel):
    """Metrics of the LLM calls in one group (or in all groups, for the total row)."""

    keys: dict[str, str | None] = Field(
        description="group_by key -> value; day as YYYY-MM-DD and hour as ISO 8601 (UTC);"
        " null for calls that did not set the dimension"
    )
    count: int
    error_count: int
    error_rate: float | None = Field(description="error_count / count; null when count is 0")
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    p50_ttft_ms: float | None = Field(description="time to first token, over calls that report it")
    p95_ttft_ms: float | None
    p99_ttft_ms: float | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float = Field(description="sum of the known costs (see cost_unknown_count)")
    cost_unknown_count: int = Field(description="calls whose cost is unknown (not counted as 0)")


class MetricsSummary(BaseModel):
    """Grouped LLM call metrics over ``[start, end)`` plus a total row."""

    start_ns: int
    end_ns: int
    start_time: datetime
    end_time: datetime
    group_by: list[str]
    source: Literal["rollups", "spans"] = Field(
        description="rollups: hourly roll-ups plus the partial hours at the edges; spans: raw spans"
    )
    groups: list[MetricsGroup] = Field(description="empty when group_by is")
    total: MetricsGroup


@dataclass(slots=True)
class MetricsAccumulator:
    """Counters and latency histograms of a group of calls, added up and read as a group."""

    count: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    ttft: dict[int, int] = field(default_factory=dict)

    def add_counts(
        self, n: int, errors: int, tin: int, tout: int, tcached: int, cost: float, unknown: int
    ) -> None:
        """Add one roll-up's counters (in ``ROLLUP_COUNTERS`` order)."""
        self.count += n
        self.errors += errors
        self.input_tokens += tin
        self.output_tokens += tout
        self.cached_tokens += tcached
        self.cost_usd += cost
        self.cost_unknown += unknown

    def merge(self, other: MetricsAccumulator) -> None:
        self.count += other.count
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd
        self.cost_unknown += other.cost_unknown
        histogram.add_into(self.latency, other.latency)
        histogram.add_into(self.ttft, other.ttft)

    def to_group(self, keys: dict[str, str | None]) -> MetricsGroup:
        p_lat = histogram.quantiles(self.latency, _QS)
        p_ttft = histogram.quantiles(self.ttft, _QS)
        return MetricsGroup(
            keys=keys,
            count=self.count,
            error_count=self.errors,
            error_rate=self.errors / self.count if self.count else None,
            p50_latency_ms=p_lat[0],
            p95_latency_ms=p_lat[1],
            p99_latency_ms=p_lat[2],
            p50_ttft_ms=p_ttft[0],
            p95_ttft_ms=p_ttft[1],
            p99_ttft_ms=p_ttft[2],
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            cost_usd=self.cost_usd,
            cost_unknown_count=self.cost_unknown,
        )


# (dimension value, start of the day or hour in Unix seconds); None where not grouped.
_Key = tuple[str | None, int | None]


def _parse_group_by(group_by: Iterable[str]) -> tuple[str | None, str | None]:
    dimension: str | None = None
    time: str | None = None
    for key in group_by:
        if key in _DIMENSIONS:
            if dimension is not None:
                raise ValueError(
                    f"group_by takes at most one of {', '.join(_DIMENSIONS)}:"
                    f" got {dimension!r} and {key!r}"
                )
            dimension = key
        elif key in _TIME_STEPS:
            if time is not None:
                raise ValueError(
                    f"group_by takes at most one of day, hour: got {time!r} and {key!r}"
                )
            time = key
        else:
            raise ValueError(
                f"unknown group_by key {key!r}: expected one of {', '.join(GROUP_BY_KEYS)}"
            )
    return dimension, time


def _active_criteria(flt: TraceFilter | None) -> dict[str, Any]:
    """The criteria of ``flt`` that narrow the calls beyond the time range."""
    if flt is None:
        return {}
    # llm_only is implied here; an empty text matches everything.
    data = flt.model_dump(exclude={"start_ns", "end_ns", "llm_only"})
    return {k: v for k, v in data.items() if v is not None and not (k == "text" and v == "")}


def metrics_summary(
    conn: Bind,
    project_id: int,
    *,
    start_ns: int,
    end_ns: int,
    group_by: Sequence[str] = (),
    filter: TraceFilter | None = None,
) -> MetricsSummary:
    """Metrics of the LLM calls of ``project_id`` that started in ``[start_ns, end_ns)``.

    ``group_by`` holds at most one of model, feature, user, tenant, provider and at most one
    of day, hour (UTC); anything else raises ``ValueError`` naming the offending key. ``model``
    groups by the model that served the call, else the one asked for. ``filter`` narrows the
    calls span by span (its time bounds intersect the range); its ``model`` matches the model
    asked for or the one served.

    Without a filter (or with a single feature, user, tenant or provider criterion) the whole
    hours of the range are read from the hourly roll-ups and only the partial hours at its
    edges from raw spans; otherwise raw spans are aggregated. Either way latency and TTFT
    percentiles are estimates from log-bucket histograms, within about 4% of the exact value;
    counts, tokens and costs are exact. Costs sum the calls whose cost is known, and
    ``cost_unknown_count`` counts the others rather than treating them as free.
    """
    dimension, time = _parse_group_by(group_by)
    if filter is not None:
        if filter.start_ns is not None:
            start_ns = max(start_ns, filter.start_ns)
        if filter.end_ns is not None:
            end_ns = min(end_ns, filter.end_ns)
    if end_ns < start_ns:
        end_ns = start_ns
    criteria = _active_criteria(filter)
    step = _TIME_STEPS[time] if time else None

    rollup: tuple[str, str | None] | None = None  # (roll-up dimension, value it must have)
    if not criteria:
        rollup = (dimension or "total", None)
    elif len(criteria) == 1:
        ((name, value),) = criteria.items()
        filtered = _ROLLUP_FILTERS.get(name)
        if filtered is not None and dimension in (None, filtered) and 0 < len(value) <= _VALUE_MAX:
            rollup = (filtered, value)

    aggs: dict[_Key, MetricsAccumulator] = {}
    with connect(conn) as c:
        first_hour = -(-start_ns // _HOUR_NS)
        end_hour = end_ns // _HOUR_NS
        if rollup is not None and first_hour < end_hour:
            hours = (first_hour * 3600, end_hour * 3600)
            _add_rollups(c, project_id, rollup, hours, dimension is not None, step, aggs)
            edges = [(start_ns, first_hour * _HOUR_NS), (end_hour * _HOUR_NS, end_ns)]
        else:
            edges = [(start_ns, end_ns)]
        for low, high in edges:
            if low < high:
                _add_spans(c, project_id, filter, low, high, dimension, step, aggs)

    # A group can sum to no call: a client's span counted in a roll-up and taken out again
    # (bastion.store.call_links) under a value its gateway span does not have.
    groups: list[tuple[_Key, MetricsAccumulator]] = sorted(
        ((key, agg) for key, agg in aggs.items() if agg.count), key=_order
    )
    total = MetricsAccumulator()
    for _, agg in groups:
        total.merge(agg)
    rows = [agg.to_group(_key_dict(key, dimension, time)) for key, agg in groups]
    return MetricsSummary(
        start_ns=start_ns,
        end_ns=end_ns,
        start_time=ns_to_datetime(start_ns),
        end_time=ns_to_datetime(end_ns),
        group_by=list(group_by),
        source="rollups" if rollup is not None else "spans",
        groups=rows if dimension or time else [],
        total=total.to_group({}),
    )


def _order(item: tuple[_Key, MetricsAccumulator]) -> tuple[int, int, bool, str]:
    (value, bucket), agg = item
    return (bucket or 0, -agg.count, value is None, value or "")


def _key_dict(key: _Key, dimension: str | None, time: str | None) -> dict[str, str | None]:
    value, bucket = key
    out: dict[str, str | None] = {}
    if dimension:
        out[dimension] = value
    if time and bucket is not None:
        moment = ns_to_datetime(bucket * 1_000_000_000)
        out[time] = moment.strftime("%Y-%m-%d" if time == "day" else "%Y-%m-%dT%H:00:00Z")
    return out


def _add_rollups(
    conn: sa.Connection,
    project_id: int,
    rollup: tuple[str, str | None],
    hours: tuple[int, int],
    keep_value: bool,
    step: int | None,
    aggs: dict[_Key, MetricsAccumulator],
) -> None:
    """Merge the roll-ups of the hours in ``hours`` (Unix seconds, half-open) into ``aggs``.

    Roll-up rows and the deferred deltas not folded into them yet are read by one statement:
    one snapshot, so a fold committing meanwhile can neither hide a batch nor count it twice.
    """
    dimension, only_value = rollup
    segments = _rollup_segments(dimension, hours, step)
    query = _rollup_query(project_id, segments, only_value)

    def agg_for(value: str, hour: int) -> MetricsAccumulator:
        key = (value or None if keep_value else None, hour - hour % step if step else None)
        agg = aggs.get(key)
        if agg is None:
            agg = aggs[key] = MetricsAccumulator()
        return agg

    # A 30-day summary by user reads tens of thousands of rows: the loop stays flat.
    loads = orjson.loads
    # Fetched at once: far cheaper per row.
    fetched: Sequence[Any] = conn.execute(query).all()
    for (
        value,
        hour,
        n,
        errors,
        tin,
        tout,
        tcached,
        cost,
        unknown,
        lat,
        ttft,
        pending,
    ) in fetched:
        if pending is not None:
            _add_deltas(pending, dimension, hours, only_value, agg_for)
            continue
        agg = agg_for(value, hour)
        agg.add_counts(n, errors, tin, tout, tcached, cost, unknown)
        target = agg.latency
        for bucket, count in loads(lat).items():
            b = int(bucket)
            target[b] = target.get(b, 0) + count
        if ttft != "{}":
            target = agg.ttft
            for bucket, count in loads(ttft).items():
                b = int(bucket)
                target[b] = target.get(b, 0) + count


def _rollup_segments(
    dimension: str, hours: tuple[int, int], step: int | None
) -> list[tuple[str, int, int]]:
    """The (row dimension, first hour, end hour) ranges that cover ``hours`` with fewest rows."""
    first_hour, end_hour = hours
    # Whole days from the day rows, unless grouping by hour; the hours around them from hourly
    # rows. Deltas are not in either yet and count wherever their hour falls in the range.
    first_day = -(-first_hour // _DAY_S) * _DAY_S
    end_day = end_hour // _DAY_S * _DAY_S
    if step == _TIME_STEPS["hour"] or first_day >= end_day:
        first_day = end_day = end_hour
    return [
        (dimension, first_hour, first_day),
        (dimension + DAY_SUFFIX, first_day, end_day),
        (dimension, end_day, end_hour),
    ]


def _rollup_query(
    project_id: int, segments: list[tuple[str, int, int]], only_value: str | None
) -> sa.CompoundSelect[Any]:
    """Roll-up rows of the non-empty ``segments`` plus the pending deltas, as one statement.

    Delta rows carry only their ``deltas`` document (NULL counters); stored rows the reverse.
    """
    r = span_rollups.c
    d = span_rollup_deltas.c

    def stored(row_dimension: str, low: int, high: int) -> sa.Select[Any]:
        conds = [
            r.project_id == project_id,
            r.dimension == row_dimension,
            r.hour >= low,
            r.hour < high,
        ]
        if only_value is not None:
            conds.append(r.value == only_value)
        return sa.select(
            r.value,
            r.hour,
            *(r[name] for name in ROLLUP_COUNTERS),
            r.latency_hist,
            r.ttft_hist,
            sa.cast(sa.null(), sa.Text).label("deltas"),
        ).where(*conds)

    parts = [
        stored(row_dimension, low, high) for row_dimension, low, high in segments if low < high
    ]
    deltas = sa.select(
        *(sa.cast(sa.null(), column.type) for column in parts[0].selected_columns[:-1]),
        d.totals,
    ).where(d.project_id == project_id)
    return sa.union_all(*parts, deltas)


def _add_deltas(
    document: str,
    dimension: str,
    hours: tuple[int, int],
    only_value: str | None,
    agg_for: Callable[[str, int], MetricsAccumulator],
) -> None:
    """Add the entries of one deferred roll-up document that fall in the summary's range."""
    first_hour, end_hour = hours
    for entry in iter_dumped(document):
        name, hour, value, *counters, latency, ttft = entry
        if name != dimension or not first_hour <= hour < end_hour:
            continue
        if only_value is not None and value != only_value:
            continue
        agg = agg_for(value, hour)
        agg.add_counts(*counters)
        histogram.add_into(agg.latency, latency)
        histogram.add_into(agg.ttft, ttft)


def _add_spans(
    conn: sa.Connection,
    project_id: int,
    flt: TraceFilter | None,
    low_ns: int,
    high_ns: int,
    dimension: str | None,
    step: int | None,
    aggs: dict[_Key, MetricsAccumulator],
) -> None:
    """Aggregate the LLM spans started in ``[low_ns, high_ns)`` that match ``flt`` into ``aggs``.

    Buckets are computed exactly as the writer computes them for the roll-ups, so raw and
    rolled-up hours merge consistently.
    """
    s = spans.c
    conds = [
        s.project_id == project_id,
        s.start_ns >= low_ns,
        s.start_ns < high_ns,
        is_llm(s),
        is_counted(s),
    ]
    if flt is not None:
        unbounded = flt.model_copy(update={"start_ns": None, "end_ns": None})
        conds.extend(span_conditions(unbounded, conn.dialect.name))
    dim_columns: list[sa.Column[Any]] = []
    if dimension == "model":
        dim_columns = [s.response_model, s.request_model]
    elif dimension is not None:
        dim_columns = [s[_RAW_COLUMNS[dimension]]]
    stmt = sa.select(
        s.start_ns,
        s.latency_ms,
        s.ttft_ms,
        s.status_code,
        s.error_class,
        s.input_tokens,
        s.output_tokens,
        s.cached_tokens,
        s.cost_usd,
        *dim_columns,
    ).where(*conds)
    step_ns = step * 1_000_000_000 if step else None
    bucket_of = histogram.bucket_of
    for row in conn.execute(stmt):
        start, latency, ttft, status, error_class, tin, tout, tcached, cost = row[:9]
        value: str | None = None
        if dim_columns:
            # Same choice as the writer: the served model, else the requested one.
            value = (row[9] or (row[10] if len(row) > 10 else None) or "")[:_VALUE_MAX] or None
        key = (value, (start // step_ns) * step if step_ns else None)
        agg = aggs.get(key)
        if agg is None:
            agg = aggs[key] = MetricsAccumulator()
        agg.count += 1
        if status == _ERROR or error_class is not None:
            agg.errors += 1
        agg.input_tokens += tin or 0
        agg.output_tokens += tout or 0
        agg.cached_tokens += tcached or 0
        if cost is None:
            agg.cost_unknown += 1
        else:
            agg.cost_usd += cost
        b = bucket_of(latency)
        agg.latency[b] = agg.latency.get(b, 0) + 1
        if ttft is not None:
            b = bucket_of(ttft)
            agg.ttft[b] = agg.ttft.get(b, 0) + 1
