"""Reads for showing one trace to a person: its spans' outline without their payloads (a
30,000-span trace in one narrow read), one span whole, and the dataset items made from it.

Every statement is scoped to the caller's project first: another project's trace id finds
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from bastion.store.queries_common import Bind, connect
from bastion.store.queries_traces import (
    SPAN_COLUMNS,
    TRACE_COLUMNS,
    SpanRecord,
    TraceSummary,
    span_data,
    trace_summary,
)
from bastion.store.schema import eval_datasets, eval_item_sources, spans, traces
from bastion.tracing.model import StatusCode

__all__ = [
    "DatasetItemRef",
    "OutlineSpan",
    "TraceOutline",
    "get_span",
    "trace_dataset_items",
    "trace_outline",
    "trace_stamp",
]

_ERROR = int(StatusCode.ERROR)


@dataclass(frozen=True, slots=True)
class OutlineSpan:
    """What a span tree row shows of a span: no input, output or attributes."""

    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    is_error: bool
    model: str | None
    operation: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    ttft_ms: float | None
    # False for a client's span of a call the gateway traced too: shown, never counted.
    counted: bool


@dataclass(frozen=True, slots=True)
class TraceOutline:
    """A trace's summary and every span's outline, ordered by start time then span id."""

    trace: TraceSummary
    spans: list[OutlineSpan]


@dataclass(frozen=True, slots=True)
class DatasetItemRef:
    """An eval dataset item made from a span of the trace."""

    dataset: str
    version: int
    item_id: str
    span_id: str


# Computed in the query where it saves a column: 30,000 rows are read per outline.
_OUTLINE_COLUMNS = (
    spans.c.span_id,
    spans.c.parent_span_id,
    spans.c.name,
    spans.c.start_ns,
    spans.c.end_ns,
    sa.or_(spans.c.status_code == _ERROR, spans.c.error_class.is_not(None)),
    sa.func.coalesce(spans.c.response_model, spans.c.request_model),
    spans.c.operation,
    spans.c.input_tokens,
    spans.c.output_tokens,
    spans.c.cost_usd,
    spans.c.ttft_ms,
    spans.c.duplicate_of.is_(None),
)


def _trace_row(c: sa.Connection, project_id: int, trace_id: str) -> sa.RowMapping | None:
    t = traces.c
    return (
        c.execute(
            sa.select(t.seq, *TRACE_COLUMNS).where(
                t.project_id == project_id, t.trace_id == trace_id
            )
        )
        .mappings()
        .first()
    )


def trace_stamp(conn: Bind, project_id: int, trace_id: str) -> tuple[int, int, int] | None:
    """What changes whenever spans of the trace arrive: (span count, start, end); None if the
    project has no such trace. A cached outline with the same stamp is still current."""
    t = traces.c
    with connect(conn) as c:
        row = c.execute(
            sa.select(t.span_count, t.start_ns, t.end_ns).where(
                t.project_id == project_id, t.trace_id == trace_id
            )
        ).first()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def trace_outline(conn: Bind, project_id: int, trace_id: str) -> TraceOutline | None:
    """The outline of every span of one trace of ``project_id``; None if there is none."""
    s = spans.c
    with connect(conn) as c:
        trace_row = _trace_row(c, project_id, trace_id)
        if trace_row is None:
            return None
        rows = c.execute(
            sa.select(*_OUTLINE_COLUMNS)
            .where(s.project_id == project_id, s.trace_seq == trace_row["seq"])
            .order_by(s.start_ns, s.span_id)
        ).all()
    if not rows:
        return None
    outline = [
        OutlineSpan(
            span_id=r[0],
            parent_span_id=r[1],
            name=r[2],
            start_ns=r[3],
            end_ns=r[4],
            is_error=bool(r[5]),
            model=r[6],
            operation=r[7],
            input_tokens=r[8] or 0,
            output_tokens=r[9] or 0,
            cost_usd=r[10],
            ttft_ms=r[11],
            counted=bool(r[12]),
        )
        for r in rows
    ]
    return TraceOutline(trace=trace_summary(trace_row), spans=outline)


def get_span(conn: Bind, project_id: int, trace_id: str, span_id: str) -> SpanRecord | None:
    """One span whole (payloads, attributes, events), or None if the project has no such
    span in that trace."""
    s = spans.c
    t = traces.c
    with connect(conn) as c:
        seq = (
            sa.select(t.seq)
            .where(t.project_id == project_id, t.trace_id == trace_id)
            .scalar_subquery()
        )
        row = (
            c.execute(
                sa.select(*SPAN_COLUMNS).where(
                    s.project_id == project_id, s.trace_seq == seq, s.span_id == span_id
                )
            )
            .mappings()
            .first()
        )
    return None if row is None else SpanRecord.model_validate(span_data(row))


def trace_dataset_items(conn: Bind, project_id: int, trace_id: str) -> list[DatasetItemRef]:
    """The dataset items made from spans of the trace, by dataset, version and item."""
    src = eval_item_sources.c
    ds = eval_datasets.c
    stmt = (
        sa.select(ds.name, ds.version, src.item_id, src.span_id)
        .select_from(eval_item_sources.join(eval_datasets, ds.id == src.dataset_version_id))
        .where(src.project_id == project_id, ds.project_id == project_id, src.trace_id == trace_id)
        .order_by(ds.name, ds.version, src.item_id)
        .limit(200)
    )
    with connect(conn) as c:
        return [DatasetItemRef(r[0], int(r[1]), r[2], r[3]) for r in c.execute(stmt)]
