"""Batch persistence of spans: one transaction writes spans, their traces and hourly roll-ups.

Writes are idempotent: a span already stored (an exporter retrying, a spool segment replayed
after a crash) is skipped, and only spans actually inserted feed the trace and roll-up counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bastion.store import histogram
from bastion.store.schema import span_rollups, spans, traces
from bastion.tracing.model import Span

__all__ = ["ROLLUP_DIMENSIONS", "SpanWriter", "span_to_row"]

ROLLUP_DIMENSIONS = ("total", "model", "provider", "feature", "user", "tenant")
_HOUR_NS = 3600 * 1_000_000_000
_ZERO: sa.ColumnElement[float] = sa.literal_column("0.0")
_SPAN_COLUMNS = tuple(c.name for c in spans.columns)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _t(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; replace it the same way on both databases.
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _cut(value: str | None, size: int) -> str | None:
    if value is None:
        return None
    return _t(value[:size]) if len(value) > size else _t(value)


def span_to_row(project_id: int, span: Span, ingested_ns: int) -> tuple[Any, ...]:
    """The ``spans`` row for ``span``, in column order (attributes kept as JSON text).

    A tuple, not a dict: this runs once per span on the ingest path.
    """
    return (
        project_id,
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        _cut(span.name, 500) or "",
        int(span.kind),
        span.start_ns,
        span.end_ns,
        int(span.status_code),
        _t(span.status_message),
        _cut(span.service_name, 200),
        _cut(span.operation, 64),
        _cut(span.provider, 64),
        _cut(span.request_model, 200),
        _cut(span.response_model, 200),
        span.input_tokens,
        span.output_tokens,
        span.cached_tokens,
        span.cache_write_tokens,
        span.cost_usd,
        span.ttft_ms,
        span.latency_ms,
        _cut(span.error_class, 200),
        _cut(span.user_id, 200),
        _cut(span.session_id, 200),
        _cut(span.feature, 200),
        _cut(span.tenant, 200),
        _cut(span.prompt_name, 200),
        span.prompt_version,
        _cut(span.release_id, 64),
        _t(span.input),
        _t(span.output),
        _dumps(span.attributes),
        _dumps(span.resource),
        _dumps(span.events),
        ingested_ns,
    )


_ROW_COLUMNS = (
    "project_id", "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
    "status_code", "status_message", "service_name", "operation", "provider", "request_model",
    "response_model", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
    "cost_usd", "ttft_ms", "latency_ms", "error_class", "user_id", "session_id", "feature",
    "tenant", "prompt_name", "prompt_version", "release_id", "input", "output", "attributes",
    "resource", "events", "ingested_ns",
)  # fmt: skip
if _ROW_COLUMNS != _SPAN_COLUMNS:  # a schema change must update span_to_row too
    raise RuntimeError(f"span_to_row is out of date with the spans table: {_SPAN_COLUMNS}")


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


class _RawStatement:
    """A Core statement compiled once and run through the driver's ``executemany``.

    The ingest path writes tens of thousands of rows a second; SQLAlchemy's per-row parameter
    processing would cost more than the database itself.
    """

    def __init__(self, statement: Any, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positiontup is not None and dialect.paramstyle == "qmark"
        self.order = list(compiled.positiontup or [])

    def executemany(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.positional:
                order = self.order
                cursor.executemany(self.sql, [tuple(r[k] for k in order) for r in rows])
            else:
                cursor.executemany(self.sql, rows)
        finally:
            cursor.close()


class SpanWriter:
    """Writes batches of ``(project_id, span)`` pairs; one instance per engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._insert = sqlite.insert if self._dialect == "sqlite" else postgresql.insert
        self._least = sa.func.min if self._dialect == "sqlite" else sa.func.least
        self._greatest = sa.func.max if self._dialect == "sqlite" else sa.func.greatest
        self._last_marker = 0
        self._span_sql = (
            f"INSERT INTO spans ({', '.join(_SPAN_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(_SPAN_COLUMNS))}) ON CONFLICT DO NOTHING"
        )
        self._trace_stmt = self._build_trace_upsert()
        self._rollup_stmt = self._build_rollup_upsert()

    def _build_trace_upsert(self) -> _RawStatement:
        ins = self._insert(traces)
        ex = ins.excluded
        t = traces.c
        cost = sa.case(
            (sa.and_(t.cost_usd.is_(None), ex.cost_usd.is_(None)), sa.null()),
            else_=sa.func.coalesce(t.cost_usd, _ZERO) + sa.func.coalesce(ex.cost_usd, _ZERO),
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["project_id", "trace_id"],
            set_={
                "start_ns": self._least(t.start_ns, ex.start_ns),
                "end_ns": self._greatest(t.end_ns, ex.end_ns),
                "root_span_id": sa.func.coalesce(ex.root_span_id, t.root_span_id),
                "name": sa.case(
                    (ex.root_span_id.is_not(None), ex.name), else_=sa.func.coalesce(t.name, ex.name)
                ),
                "span_count": t.span_count + ex.span_count,
                "error_count": t.error_count + ex.error_count,
                "llm_count": t.llm_count + ex.llm_count,
                "input_tokens": t.input_tokens + ex.input_tokens,
                "output_tokens": t.output_tokens + ex.output_tokens,
                "cost_usd": cost,
                "user_id": sa.func.coalesce(t.user_id, ex.user_id),
                "session_id": sa.func.coalesce(t.session_id, ex.session_id),
                "feature": sa.func.coalesce(t.feature, ex.feature),
                "tenant": sa.func.coalesce(t.tenant, ex.tenant),
                "service_name": sa.func.coalesce(t.service_name, ex.service_name),
            },
        )
        return _RawStatement(stmt, self.engine.dialect)

    def _build_rollup_upsert(self) -> _RawStatement:
        ins = self._insert(span_rollups)
        ex = ins.excluded
        r = span_rollups.c
        additive = [
            "span_count",
            "error_count",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost_usd",
            "cost_unknown_count",
        ]
        set_: dict[str, Any] = {name: r[name] + ex[name] for name in additive}
        set_["latency_hist"] = sa.func.bastion_hist_merge(r.latency_hist, ex.latency_hist)
        set_["ttft_hist"] = sa.func.bastion_hist_merge(r.ttft_hist, ex.ttft_hist)
        stmt = ins.on_conflict_do_update(
            index_elements=["project_id", "dimension", "hour", "value"], set_=set_
        )
        return _RawStatement(stmt, self.engine.dialect)

    def write(self, batch: Sequence[tuple[int, Span]]) -> int:
        """Persist ``batch`` in one transaction; returns how many spans were new."""
        if not batch:
            return 0
        with self.engine.begin() as conn:
            return self.write_in(conn, batch)

    def write_in(self, conn: sa.Connection, batch: Sequence[tuple[int, Span]]) -> int:
        """Like :meth:`write`, inside the caller's transaction."""
        unique: dict[tuple[int, str, str], Span] = {}
        for project_id, span in batch:
            unique.setdefault((project_id, span.trace_id, span.span_id), span)
        inserted = self._insert_spans(conn, unique)
        if not inserted:
            return 0
        new = [(key[0], unique[key]) for key in inserted]
        self._upsert_traces(conn, new)
        self._upsert_rollups(conn, new)
        return len(new)

    def _insert_spans(
        self, conn: sa.Connection, unique: dict[tuple[int, str, str], Span]
    ) -> list[tuple[int, str, str]]:
        """Insert the spans not stored yet; return the keys of those actually inserted."""
        # A marker no earlier batch used: rows carrying it after the insert are this batch's.
        marker = max(time.time_ns(), self._last_marker + 1)
        self._last_marker = marker
        rows = [span_to_row(key[0], span, marker) for key, span in unique.items()]
        if self._dialect == "postgresql":
            return self._insert_spans_copy(conn, rows)
        driver = conn.connection.driver_connection
        cursor = driver.cursor()  # type: ignore[union-attr]
        try:
            before = driver.total_changes  # type: ignore[union-attr]
            cursor.executemany(self._span_sql, rows)
            if driver.total_changes - before == len(rows):  # type: ignore[union-attr]
                return list(unique)  # nothing was a duplicate: no need to look
            by_project: dict[int, list[str]] = {}
            for project_id, trace_id, _ in unique:
                by_project.setdefault(project_id, []).append(trace_id)
            inserted: list[tuple[int, str, str]] = []
            for project_id, trace_ids in by_project.items():
                distinct = sorted(set(trace_ids))
                for i in range(0, len(distinct), 500):
                    chunk = distinct[i : i + 500]
                    cursor.execute(
                        "SELECT project_id, trace_id, span_id FROM spans WHERE project_id = ?"
                        f" AND trace_id IN ({','.join('?' * len(chunk))}) AND ingested_ns = ?",
                        [project_id, *chunk, marker],
                    )
                    inserted.extend(cursor.fetchall())
            return inserted
        finally:
            cursor.close()

    def _insert_spans_copy(
        self, conn: sa.Connection, rows: list[tuple[Any, ...]]
    ) -> list[tuple[int, str, str]]:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS bastion_span_stage"
                " (LIKE spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            columns = ", ".join(_SPAN_COLUMNS)
            with cursor.copy(f"COPY bastion_span_stage ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO spans ({columns}) SELECT {columns} FROM bastion_span_stage"
                " ON CONFLICT DO NOTHING RETURNING project_id, trace_id, span_id"
            )
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def _upsert_traces(self, conn: sa.Connection, items: Iterable[tuple[int, Span]]) -> None:
        aggs: dict[tuple[int, str], _TraceAgg] = {}
        for project_id, span in items:
            key = (project_id, span.trace_id)
            agg = aggs.get(key)
            if agg is None:
                agg = aggs[key] = _TraceAgg(span.start_ns, span.end_ns)
            agg.add(span)
        rows = [
            {
                "project_id": project_id,
                "trace_id": trace_id,
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
            for (project_id, trace_id), a in sorted(aggs.items())
        ]
        # Sorted keys keep the lock order stable, so concurrent writers cannot deadlock.
        self._trace_stmt.executemany(conn, rows)

    def _upsert_rollups(self, conn: sa.Connection, items: Iterable[tuple[int, Span]]) -> None:
        # One accumulator per (project, dimension, hour, value): span count, errors, input,
        # output and cached tokens, cost, spans of unknown cost, latency and TTFT histograms.
        acc: dict[tuple[int, str, int, str], list[Any]] = {}
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
        if not acc:
            return
        rows = [
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
            # Sorted keys keep the lock order stable, so concurrent writers cannot deadlock.
            for (project_id, dimension, hour, value), a in sorted(acc.items())
        ]
        self._rollup_stmt.executemany(conn, rows)
