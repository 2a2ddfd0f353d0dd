"""The trace and roll-up rows a batch of spans adds to, computed in memory.

The span writer computes these before it opens its transaction, so that the database (and, on
SQLite, the single write lock every worker process shares) is held only while rows are
written, never while Python adds them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.store import histogram
from bastion.tracing.model import Span

__all__ = [
    "DAY_SUFFIX",
    "ROLLUP_COUNTERS",
    "ROLLUP_DIMENSIONS",
    "RollupTotals",
    "iter_dumped",
    "trace_rows",
]

ROLLUP_DIMENSIONS = ("total", "model", "provider", "feature", "user", "tenant")
# Suffix of the dimension of a day's roll-up rows: ``user:day`` rows, keyed by the day's first
# second, sum that day's ``user`` hours. A 30-day summary by user reads one row per user and
# day instead of one per user and hour.
DAY_SUFFIX = ":day"
_DAY_S = 86_400
# The additive columns of span_rollups, in the order RollupTotals keeps and dumps them.
ROLLUP_COUNTERS = (
    "span_count",
    "error_count",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_unknown_count",
)
_HOUR_NS = 3600 * 1_000_000_000


@dataclass(slots=True)
class _TraceAgg:
    start_ns: int
    end_ns: int
    root_span_id: str | None = None
    name: str | None = None
    span_count: int = 0
    error_count: int = 0
    llm_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    user_id: str | None = None
    session_id: str | None = None
    feature: str | None = None
    tenant: str | None = None
    service_name: str | None = None

    def add(self, span: Span) -> None:
        self.start_ns = min(self.start_ns, span.start_ns)
        self.end_ns = max(self.end_ns, span.end_ns)
        if span.parent_span_id is None:
            self.root_span_id = span.span_id
            self.name = span.name[:500]
        elif self.name is None:
            self.name = span.name[:500]
        self.span_count += 1
        self.error_count += span.is_error
        if span.is_llm:
            self.llm_count += 1
        self.input_tokens += span.input_tokens or 0
        self.output_tokens += span.output_tokens or 0
        if span.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + span.cost_usd
        self.user_id = self.user_id or span.user_id
        self.session_id = self.session_id or span.session_id
        self.feature = self.feature or span.feature
        self.tenant = self.tenant or span.tenant
        self.service_name = self.service_name or span.service_name


def trace_rows(items: Iterable[tuple[int, Span]]) -> list[dict[str, Any]]:
    """One ``traces`` upsert row per trace of ``items``, its counters summed over the batch."""
    aggs: dict[tuple[int, str], _TraceAgg] = {}
    for project_id, span in items:
        key = (project_id, span.trace_id)
        agg = aggs.get(key)
        if agg is None:
            agg = aggs[key] = _TraceAgg(span.start_ns, span.end_ns)
        agg.add(span)
    return [
        {
            "project_id": project_id,
            "trace_id": trace_id,
            "seq": None,  # a new trace's number: the writer assigns it
            "start_ns": a.start_ns,
            "end_ns": a.end_ns,
            "root_span_id": a.root_span_id,
            "name": a.name,
            "span_count": a.span_count,
            "error_count": a.error_count,
            "llm_count": a.llm_count,
            "input_tokens": a.input_tokens,
            "output_tokens": a.output_tokens,
            "cost_usd": a.cost_usd,
            "user_id": a.user_id,
            "session_id": a.session_id,
            "feature": a.feature,
            "tenant": a.tenant,
            "service_name": a.service_name,
        }
        for (project_id, trace_id), a in aggs.items()
    ]


RollupKey = tuple[int, str, int, str]  # project, dimension, hour (Unix s), value


class RollupTotals:
    """Hourly roll-up counters of LLM spans, one accumulator per (project, dimension, hour,
    value); the ``span_rollups`` upsert rows of a batch.

    Totals of batches prepared apart merge (:meth:`merge`) before they are written, so a
    transaction upserts each key once however many requests it carries: the upserts, and on
    PostgreSQL the histogram merges inside them, cost per row written, not per span.
    """

    __slots__ = ("_acc",)

    def __init__(self) -> None:
        # Per key: span count, errors, input, output and cached tokens, cost, spans of unknown
        # cost, latency histogram, TTFT histogram (bucket -> count).
        self._acc: dict[RollupKey, list[Any]] = {}

    @classmethod
    def of(cls, items: Iterable[tuple[int, Span]]) -> RollupTotals:
        totals = cls()
        totals.add(items)
        return totals

    def __len__(self) -> int:
        return len(self._acc)

    def add(self, items: Iterable[tuple[int, Span]]) -> None:
        """Count the LLM spans of ``items`` in."""
        acc = self._acc
        bucket_of = histogram.bucket_of
        for project_id, span in items:
            if not span.is_llm:
                continue
            hour = (span.start_ns // _HOUR_NS) * 3600
            error = 1 if span.is_error else 0
            inp = span.input_tokens or 0
            out = span.output_tokens or 0
            cached = span.cached_tokens or 0
            cost = span.cost_usd
            latency_bucket = bucket_of(span.latency_ms)
            ttft_bucket = None if span.ttft_ms is None else bucket_of(span.ttft_ms)
            for dimension, value in (
                ("total", ""),
                ("model", span.model),
                ("provider", span.provider),
                ("feature", span.feature),
                ("user", span.user_id),
                ("tenant", span.tenant),
            ):
                key = (project_id, dimension, hour, (value or "")[:200])
                a = acc.get(key)
                if a is None:
                    a = acc[key] = [0, 0, 0, 0, 0, 0.0, 0, {}, {}]
                a[0] += 1
                a[1] += error
                a[2] += inp
                a[3] += out
                a[4] += cached
                if cost is None:
                    a[6] += 1
                else:
                    a[5] += cost
                hist = a[7]
                hist[latency_bucket] = hist.get(latency_bucket, 0) + 1
                if ttft_bucket is not None:
                    ttft = a[8]
                    ttft[ttft_bucket] = ttft.get(ttft_bucket, 0) + 1

    def _add(
        self,
        key: RollupKey,
        counters: Sequence[Any],
        latency: Mapping[int, int],
        ttft: Mapping[int, int],
    ) -> None:
        """Add seven counters (``ROLLUP_COUNTERS`` order) and two histograms to ``key``."""
        a = self._acc.get(key)
        if a is None:
            a = self._acc[key] = [0, 0, 0, 0, 0, 0.0, 0, {}, {}]
        for i in range(7):
            a[i] += counters[i]
        histogram.add_into(a[7], latency)
        histogram.add_into(a[8], ttft)

    def with_days(self) -> RollupTotals:
        """These totals and, beside each hourly key, the same counters under its day's key
        (what is written to ``span_rollups``: every hour adds to its day too)."""
        out = RollupTotals()
        for key, a in self._acc.items():
            out._add(key, a, a[7], a[8])
            project_id, dimension, hour, value = key
            if not dimension.endswith(DAY_SUFFIX):
                day = (project_id, dimension + DAY_SUFFIX, hour - hour % _DAY_S, value)
                out._add(day, a, a[7], a[8])
        return out

    def negated(self) -> RollupTotals:
        """These totals with every counter and histogram count negated: merged into stored
        roll-ups, they take back spans that were counted (``bastion.store.call_links``)."""
        out = RollupTotals()
        for key, a in self._acc.items():
            out._acc[key] = [
                *(-n for n in a[:7]),
                {b: -n for b, n in a[7].items()},
                {b: -n for b, n in a[8].items()},
            ]
        return out

    def merge(self, other: RollupTotals) -> None:
        """Add ``other``'s counters into these (``other`` is left as it was)."""
        for key, b in other._acc.items():
            self._add(key, b, b[7], b[8])

    def dumps_by_project(self) -> dict[int, bytes]:
        """The counters as JSON, one document per project (what a deferred write stores).

        A document is a list of ``[dimension, hour, value, count, errors, input tokens,
        output tokens, cached tokens, cost, unknown-cost count, latency histogram, TTFT
        histogram]`` entries; :func:`iter_dumped` reads it back.
        """
        entries: dict[int, list[list[Any]]] = {}
        for (project_id, dimension, hour, value), a in self._acc.items():
            entries.setdefault(project_id, []).append([dimension, hour, value, *a])
        return {
            project_id: orjson.dumps(items, option=orjson.OPT_NON_STR_KEYS)
            for project_id, items in entries.items()
        }

    def add_dumped(self, project_id: int, document: str | bytes) -> None:
        """Add the counters of a :meth:`dumps_by_project` document of ``project_id``."""
        for dimension, hour, value, *b in iter_dumped(document):
            self._add((project_id, dimension, hour, value), b, b[7], b[8])

    def row_keys(self) -> list[RollupKey]:
        return list(self._acc)

    def add_row(
        self, key: RollupKey, counters: Sequence[Any], latency_hist: str, ttft_hist: str
    ) -> None:
        """Add one stored ``span_rollups`` row (its seven counters and encoded histograms)."""
        self._add(key, counters, histogram.decode(latency_hist), histogram.decode(ttft_hist))

    def rows(self) -> list[dict[str, Any]]:
        """One ``span_rollups`` upsert row per key."""
        return [
            {
                "project_id": project_id,
                "dimension": dimension,
                "hour": hour,
                "value": value,
                "span_count": a[0],
                "error_count": a[1],
                "input_tokens": a[2],
                "output_tokens": a[3],
                "cached_tokens": a[4],
                "cost_usd": a[5],
                "cost_unknown_count": a[6],
                "latency_hist": histogram.encode(a[7]),
                "ttft_hist": histogram.encode(a[8]),
            }
            for (project_id, dimension, hour, value), a in self._acc.items()
        ]


def iter_dumped(document: str | bytes) -> Iterator[list[Any]]:
    """The entries of a :meth:`RollupTotals.dumps_by_project` document, histogram buckets as
    integers again."""
    for entry in orjson.loads(document):
        entry[10] = {int(k): v for k, v in entry[10].items()}
        entry[11] = {int(k): v for k, v in entry[11].items()}
        yield entry
