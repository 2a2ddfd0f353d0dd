"""The dashboards' time series: LLM call metrics per step, grouped by one dimension.

Roll-up dimensions come from :func:`bastion.store.queries.metrics_summary` (hourly and daily
roll-ups plus raw spans at the partial hours of the edges). Prompt version and release are not
in the roll-ups: :func:`_raw_groups` reads the spans that name one through their partial index
over a range bounded by :mod:`bastion.ui.dashboard_params`. Percentiles come from the same
log-bucket histograms either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

import sqlalchemy as sa

from bastion.store import histogram
from bastion.store.queries_common import SpanFilter, is_counted, is_llm
from bastion.store.queries_metrics import MetricsAccumulator, MetricsGroup, metrics_summary
from bastion.store.schema import spans
from bastion.tracing.model import StatusCode
from bastion.ui.dashboard_params import RAW_GROUPS, DashboardParams
from bastion.ui.rollup_totals import rollup_totals

__all__ = ["Chart", "Series", "load_series"]

TOP_SERIES = 6  # groups drawn per chart; the note above the charts says how many there were
_NS = 1_000_000_000
_QS = (0.5, 0.95, 0.99)
_ERROR = int(StatusCode.ERROR)
_NONE_LABEL = "(not set)"
_Metric = Callable[[MetricsGroup], float | None]
# Roll-up dimensions a filter can select one value of (so one value's rows are read alone).
_FILTER_FIELDS = {
    "feature": "feature",
    "user": "user_id",
    "tenant": "tenant",
    "provider": "provider",
}

_COUNT: _Metric = attrgetter("count")
_ERR: _Metric = attrgetter("error_rate")
_TIN: _Metric = attrgetter("input_tokens")
_TOUT: _Metric = attrgetter("output_tokens")
_COST: _Metric = attrgetter("cost_usd")
_LAT: dict[str, _Metric] = {q: attrgetter(f"{q}_latency_ms") for q in ("p50", "p95", "p99")}
_TTFT: dict[str, _Metric] = {q: attrgetter(f"{q}_ttft_ms") for q in ("p50", "p95", "p99")}
# Metrics that have no value for a step without calls (a count there is 0).
_UNDEFINED_WHEN_EMPTY = {_ERR, *_LAT.values(), *_TTFT.values()}
_UNGROUPED: list[tuple[str, str, list[tuple[str | None, _Metric]]]] = [
    ("requests", "Requests", [("requests", _COUNT)]),
    ("errors", "Error rate", [("error rate", _ERR)]),
    ("latency", "Latency (ms)", list(_LAT.items())),
    ("ttft", "Time to first token (ms)", list(_TTFT.items())),
    ("tokens", "Tokens", [("in", _TIN), ("out", _TOUT)]),
    ("cost", "Cost (USD)", [("cost", _COST)]),
]
_GROUPED: list[tuple[str, str, _Metric]] = [
    ("requests", "Requests", _COUNT),
    ("errors", "Error rate", _ERR),
    ("latency-p50", "Latency p50 (ms)", _LAT["p50"]),
    ("latency-p95", "Latency p95 (ms)", _LAT["p95"]),
    ("latency-p99", "Latency p99 (ms)", _LAT["p99"]),
    ("ttft-p95", "TTFT p95 (ms)", _TTFT["p95"]),
    ("tokens-in", "Input tokens", _TIN),
    ("tokens-out", "Output tokens", _TOUT),
    ("cost", "Cost (USD)", _COST),
]


@dataclass(frozen=True, slots=True)
class Chart:
    """One chart: a title, its x values (Unix seconds) and named series of the same length."""

    key: str
    title: str
    x: list[int]
    series: list[tuple[str, list[float | None]]]

    def as_data(self) -> dict[str, Any]:
        """What the page hands to the chart script (a ``data-`` attribute)."""
        return {
            "title": self.title,
            "x": self.x,
            "labels": [label for label, _ in self.series],
            "values": [values for _, values in self.series],
        }

    @property
    def rows(self) -> list[tuple[int, list[float | None]]]:
        """The same numbers as table rows: one per step."""
        return [(x, [values[i] for _, values in self.series]) for i, x in enumerate(self.x)]


@dataclass(slots=True)
class Series:
    """The cells of the grid (group, step start) and which groups lead."""

    buckets: list[int]
    labels: list[str]  # the TOP_SERIES groups with most calls, most first
    group_count: int
    cells: dict[tuple[str, int], MetricsGroup] = field(default_factory=dict)
    source: str = "rollups"
    unset_left_out: bool = False  # calls without a value exist but are not drawn

    def charts(self, grouped: bool) -> list[Chart]:
        """Every chart of the dashboard for this grid."""
        if not grouped:
            return [self._chart(key, title, metrics) for key, title, metrics in _UNGROUPED]
        return [self._chart(key, title, [(None, metric)]) for key, title, metric in _GROUPED]

    def _chart(self, key: str, title: str, metrics: list[tuple[str | None, _Metric]]) -> Chart:
        series: list[tuple[str, list[float | None]]] = []
        for label in self.labels:
            for name, metric in metrics:
                values = [self._value(label, b, metric) for b in self.buckets]
                series.append((name or label, values))
        return Chart(key, title, self.buckets, series)

    def _value(self, label: str, bucket: int, metric: _Metric) -> float | None:
        cell = self.cells.get((label, bucket))
        if cell is None:
            return None if metric in _UNDEFINED_WHEN_EMPTY else 0
        value = metric(cell)
        return None if value is None else round(value, 6)


def _bucket_seconds(key: str) -> int:
    """A summary's day (``YYYY-MM-DD``) or hour (ISO 8601, Z) as Unix seconds."""
    text = key.replace("Z", "+00:00") if "T" in key else key + "T00:00:00+00:00"
    return int(datetime.fromisoformat(text).timestamp())


def load_series(
    conn: sa.Connection, project_id: int, params: DashboardParams, now_s: int
) -> Series:
    """The grid of ``params`` over the range ending at ``now_s``."""
    step = params.step_s
    start_s = now_s - params.range_s
    buckets = list(range(start_s - start_s % step, now_s, step))
    if params.group in _FILTER_FIELDS:
        ranked = _ranked(conn, project_id, params.group, start_s, now_s)
        if len(ranked) > TOP_SERIES:
            return _top_series(conn, project_id, params, ranked, buckets, (start_s, now_s))
    if params.group in RAW_GROUPS:
        cells = _raw_groups(conn, project_id, params.group, start_s * _NS, now_s * _NS, step)
        source = "spans"
    else:
        group_by = [params.group, params.step] if params.group else [params.step]
        summary = metrics_summary(
            conn, project_id, start_ns=start_s * _NS, end_ns=now_s * _NS, group_by=group_by
        )
        cells = {}
        for g in summary.groups:
            label = (g.keys.get(params.group) or _NONE_LABEL) if params.group else "all"
            cells[(label, _bucket_seconds(g.keys[params.step] or ""))] = g
        source = summary.source
    totals: dict[str, int] = {}
    for (label, _), cell in cells.items():
        totals[label] = totals.get(label, 0) + cell.count
    labels = sorted(totals, key=lambda name: (-totals[name], name))
    if not params.group:
        labels = ["all"]
    return Series(buckets, labels[:TOP_SERIES], len(totals), cells, source)


def _ranked(
    conn: sa.Connection, project_id: int, group: str, start_s: int, end_s: int
) -> list[str]:
    """The values of ``group`` with calls in the range, most calls first ('' is "not set")."""
    totals = rollup_totals(conn, project_id, group, start_s, end_s)
    return sorted((v for v, t in totals.items() if t.count), key=lambda v: (-totals[v].count, v))


def _top_series(
    conn: sa.Connection,
    project_id: int,
    params: DashboardParams,
    ranked: list[str],
    buckets: list[int],
    range_s: tuple[int, int],
) -> Series:
    """Many values (users, say): the leading ones' series alone, each from its own roll-up
    rows, instead of every (value, step) cell of the range. Calls without a value are not
    drawn then: no roll-up row selects them apart (the ungrouped charts count them)."""
    top = [value for value in ranked if value][:TOP_SERIES]
    cells: dict[tuple[str, int], MetricsGroup] = {}
    for value in top:
        summary = metrics_summary(
            conn,
            project_id,
            start_ns=range_s[0] * _NS,
            end_ns=range_s[1] * _NS,
            group_by=[params.step],
            filter=SpanFilter(**{_FILTER_FIELDS[params.group]: value}),
        )
        for g in summary.groups:
            cells[(value, _bucket_seconds(g.keys[params.step] or ""))] = g
    return Series(buckets, top, len(ranked), cells, "rollups", unset_left_out="" in ranked)


def _raw_groups(
    conn: sa.Connection, project_id: int, group: str, low_ns: int, high_ns: int, step: int
) -> dict[tuple[str, int], MetricsGroup]:
    """Cells grouped by prompt version or release, from the spans that name one."""
    s = spans.c
    if group == "prompt":
        dims: list[sa.ColumnElement[Any]] = [s.prompt_name, s.prompt_version]
        named = s.prompt_name.is_not(None)
    else:
        dims = [s.release_id]
        named = s.release_id.is_not(None)
    stmt = sa.select(
        s.start_ns, s.latency_ms, s.ttft_ms, s.status_code, s.error_class,
        s.input_tokens, s.output_tokens, s.cached_tokens, s.cost_usd, *dims,
    ).where(
        s.project_id == project_id, named, s.start_ns >= low_ns, s.start_ns < high_ns,
        is_llm(s), is_counted(s),
    )  # fmt: skip
    accs: dict[tuple[str, int], MetricsAccumulator] = {}
    bucket_of = histogram.bucket_of
    for row in conn.execute(stmt):
        start, latency, ttft, status, error_class, tin, tout, tcached, cost = row[:9]
        label = f"{row[9]} v{row[10]}" if group == "prompt" else str(row[9])
        bucket = start // _NS - (start // _NS) % step
        acc = accs.setdefault((label, bucket), MetricsAccumulator())
        acc.count += 1
        acc.errors += status == _ERROR or error_class is not None
        acc.input_tokens += tin or 0
        acc.output_tokens += tout or 0
        acc.cached_tokens += tcached or 0
        if cost is None:
            acc.cost_unknown += 1
        else:
            acc.cost_usd += cost
        b = bucket_of(latency)  # one bucket per row, added in place: this loop is the cost
        acc.latency[b] = acc.latency.get(b, 0) + 1
        if ttft is not None:
            b = bucket_of(ttft)
            acc.ttft[b] = acc.ttft.get(b, 0) + 1
    return {key: acc.to_group({}) for key, acc in accs.items()}
