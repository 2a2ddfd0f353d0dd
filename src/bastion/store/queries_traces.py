"""Trace and span listings (keyset-paginated, newest first) and single-trace span trees.

The public names are re-exported by :mod:`bastion.store.queries`; import them from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field

from bastion.store.queries_common import (
    Bind,
    TraceFilter,
    check_limit,
    connect,
    decode_cursor,
    encode_cursor,
    latency_ns_at_least,
    ns_to_datetime,
    span_conditions,
    span_only_fields,
    text_condition,
)
from bastion.store.schema import spans, traces
from bastion.tracing.model import MODEL_OPERATIONS, StatusCode

__all__ = [
    "SPAN_COLUMNS",
    "TRACE_COLUMNS",
    "SpanNode",
    "SpanPage",
    "SpanRecord",
    "TracePage",
    "TraceSummary",
    "TraceTree",
    "get_trace",
    "list_spans",
    "list_traces",
    "span_data",
    "trace_conditions",
    "trace_summary",
]

_ERROR = int(StatusCode.ERROR)


class TraceSummary(BaseModel):
    """One trace as listed: its time span and totals over all its spans."""

    trace_id: str
    name: str | None = Field(description="name of the root span (else of the first span seen)")
    start_ns: int
    end_ns: int
    start_time: datetime
    end_time: datetime
    latency_ms: float = Field(description="end of the last span minus start of the first")
    span_count: int
    error_count: int
    llm_count: int = Field(
        description="model calls: spans that describe one, a call the gateway traced counted once"
    )
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(description="sum of the known span costs; null if none known")
    user_id: str | None
    session_id: str | None
    feature: str | None
    tenant: str | None
    service_name: str | None
    status: Literal["ok", "error"] = Field(description="error when any span is an error")


class TracePage(BaseModel):
    """A page of traces, newest first; ``next_cursor`` is null on the last page."""

    items: list[TraceSummary]
    next_cursor: str | None = None


class SpanRecord(BaseModel):
    """Every stored column of one span, with its JSON documents parsed."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int = Field(description="OpenTelemetry span kind (0 unspecified ... 5 consumer)")
    start_ns: int
    end_ns: int
    start_time: datetime
    end_time: datetime
    latency_ms: float
    status_code: int = Field(description="OpenTelemetry status: 0 unset, 1 ok, 2 error")
    status: Literal["ok", "error"] = Field(description="error: status 2 or an error class")
    status_message: str | None
    service_name: str | None
    is_llm: bool = Field(description="the span describes a model call")
    model: str | None = Field(description="the model that served the call, else the one asked for")
    operation: str | None
    provider: str | None
    request_model: str | None
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cache_write_tokens: int | None
    cost_usd: float | None = Field(description="null when the price is unknown")
    ttft_ms: float | None
    error_class: str | None
    user_id: str | None
    session_id: str | None
    feature: str | None
    tenant: str | None
    prompt_name: str | None
    prompt_version: int | None
    release_id: str | None
    input: str | None
    output: str | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[Any]
    ingested_ns: int
    request_id: str | None = Field(description="the gateway's x-request-id (gateway spans only)")
    duplicate_of: str | None = Field(
        description="a client's span of a call the gateway traced too: the gateway span's id;"
        " its tokens and cost are counted there, never here"
    )


class SpanNode(SpanRecord):
    """A span in a trace tree, with its children ordered by start time."""

    children: list[SpanNode] = Field(default_factory=list)


class SpanPage(BaseModel):
    """A page of spans, newest first; ``next_cursor`` is null on the last page."""

    items: list[SpanRecord]
    next_cursor: str | None = None


class TraceTree(BaseModel):
    """One trace: its summary and its spans nested under their parents.

    Spans whose parent is not stored (an orphan, or a trace still arriving) are roots too.
    """

    trace: TraceSummary
    roots: list[SpanNode]


# The project is the caller's and the sequence numbers are storage keys: neither is shown.
TRACE_COLUMNS = [c for c in traces.c if c.name not in ("project_id", "seq")]
SPAN_COLUMNS = [c for c in spans.c if c.name not in ("project_id", "trace_seq")]


def trace_summary(row: Mapping[Any, Any]) -> TraceSummary:
    """A :class:`TraceSummary` of a ``traces`` row read with :data:`TRACE_COLUMNS`."""
    start_ns: int = row["start_ns"]
    end_ns: int = row["end_ns"]
    return TraceSummary(
        trace_id=row["trace_id"],
        name=row["name"],
        start_ns=start_ns,
        end_ns=end_ns,
        start_time=ns_to_datetime(start_ns),
        end_time=ns_to_datetime(end_ns),
        latency_ms=max(0, end_ns - start_ns) / 1e6,
        span_count=row["span_count"],
        error_count=row["error_count"],
        llm_count=row["llm_count"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        total_tokens=row["input_tokens"] + row["output_tokens"],
        cost_usd=row["cost_usd"],
        user_id=row["user_id"],
        session_id=row["session_id"],
        feature=row["feature"],
        tenant=row["tenant"],
        service_name=row["service_name"],
        status="error" if row["error_count"] else "ok",
    )


def span_data(row: sa.RowMapping) -> dict[str, Any]:
    """The fields of a :class:`SpanRecord` from a ``spans`` row read with :data:`SPAN_COLUMNS`."""
    data = dict(row)
    data["attributes"] = orjson.loads(data["attributes"])
    data["resource"] = orjson.loads(data["resource"])
    data["events"] = orjson.loads(data["events"])
    data["start_time"] = ns_to_datetime(data["start_ns"])
    data["end_time"] = ns_to_datetime(data["end_ns"])
    data["is_llm"] = data["operation"] in MODEL_OPERATIONS or data["request_model"] is not None
    data["model"] = data["response_model"] or data["request_model"]
    error = data["status_code"] == _ERROR or data["error_class"] is not None
    data["status"] = "error" if error else "ok"
    return data


def trace_conditions(
    project_id: int, flt: TraceFilter, dialect: str
) -> list[sa.ColumnElement[bool]]:
    """WHERE conditions on ``traces`` selecting the project's traces that match ``flt``."""
    t = traces.c
    s = spans.c
    conds: list[sa.ColumnElement[bool]] = [t.project_id == project_id]
    if flt.start_ns is not None:
        conds.append(t.start_ns >= flt.start_ns)
    if flt.end_ns is not None:
        conds.append(t.start_ns < flt.end_ns)
    for field in ("user_id", "session_id", "feature", "tenant", "service_name", "name"):
        value = getattr(flt, field)
        if value is not None:
            conds.append(t[field] == value)
    if flt.status == "error":
        conds.append(t.error_count > 0)
    elif flt.status == "ok":
        conds.append(t.error_count == 0)
    if flt.min_latency_ms is not None:
        conds.append(t.end_ns - t.start_ns >= latency_ns_at_least(flt.min_latency_ms))
    if flt.min_cost_usd is not None:
        conds.append(t.cost_usd >= flt.min_cost_usd)

    def has_span(condition: sa.ColumnElement[bool]) -> sa.Exists:
        inner = [s.project_id == project_id, s.trace_seq == t.seq, condition]
        if flt.start_ns is not None:
            # Implied (a trace starts with its first span) but lets a planner bound a scan of
            # spans by time instead of probing every trace.
            inner.append(s.start_ns >= flt.start_ns)
        return sa.exists().where(*inner)

    if flt.model is not None:
        conds.append(has_span(sa.or_(s.request_model == flt.model, s.response_model == flt.model)))
    if flt.error_class is not None:
        conds.append(has_span(s.error_class == flt.error_class))
    if flt.text:
        conds.append(has_span(text_condition(s, flt.text, dialect)))
    if flt.request_id is not None:
        # By trace id, with the project: the traces' key then beats their time index, and
        # the spans come from the request-id index (a handful, not a probe per trace).
        conds.append(
            t.trace_id.in_(
                sa.select(s.trace_id).where(
                    s.project_id == project_id, s.request_id == flt.request_id
                )
            )
        )
    return conds


def _sort_key(start_ns: sa.Column[int], flt: TraceFilter) -> sa.ColumnElement[int]:
    """The start time to sort by. A request id selects a handful of rows, best found through
    its index and sorted; SQLite would rather walk the time index to skip the sort (every row
    of the project), unless the sort key is an expression it has no index for."""
    return start_ns + 0 if flt.request_id is not None else start_ns


def list_traces(
    conn: Bind,
    project_id: int,
    filter: TraceFilter | None = None,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> TracePage:
    """Traces of ``project_id`` matching ``filter``, newest first by (start, trace id).

    Pass the page's ``next_cursor`` back as ``cursor`` for the next page: pages neither repeat
    nor skip a trace, even among traces that started in the same nanosecond. ``limit`` is 1 to
    1000; a malformed cursor or a criterion that only applies to spans raises ``ValueError``.
    """
    check_limit(limit)
    flt = filter or TraceFilter()
    span_only = span_only_fields(flt)
    if span_only:
        raise ValueError(f"span-only criteria cannot select traces: {', '.join(span_only)}")
    t = traces.c
    with connect(conn) as c:
        conds = trace_conditions(project_id, flt, c.dialect.name)
        if cursor is not None:
            after_ns, after_id = decode_cursor(cursor, "t", (int, str))
            conds.append(t.start_ns <= after_ns)
            conds.append(sa.or_(t.start_ns < after_ns, t.trace_id < after_id))
        stmt = (
            sa.select(*TRACE_COLUMNS)
            .where(*conds)
            .order_by(_sort_key(t.start_ns, flt).desc(), t.trace_id.desc())
            .limit(limit + 1)
        )
        rows = c.execute(stmt).mappings().all()
    items = [trace_summary(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor("t", last.start_ns, last.trace_id)
    return TracePage(items=items, next_cursor=next_cursor)


def list_spans(
    conn: Bind,
    project_id: int,
    filter: TraceFilter | None = None,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> SpanPage:
    """Spans of ``project_id`` matching ``filter`` span by span, newest first.

    ``filter`` may be a :class:`SpanFilter` for span-only criteria (operation, provider, trace,
    prompt, release, LLM calls only). Ordered by (start, trace id, span id) and paginated with
    ``next_cursor`` like :func:`list_traces`; ``limit`` is 1 to 1000.
    """
    check_limit(limit)
    flt = filter or TraceFilter()
    s = spans.c
    with connect(conn) as c:
        conds = [s.project_id == project_id, *span_conditions(flt, c.dialect.name)]
        if cursor is not None:
            after_ns, after_trace, after_span = decode_cursor(cursor, "s", (int, str, str))
            conds.append(s.start_ns <= after_ns)
            conds.append(
                sa.or_(
                    s.start_ns < after_ns,
                    sa.tuple_(s.trace_id, s.span_id) < sa.tuple_(after_trace, after_span),
                )
            )
        stmt = (
            sa.select(*SPAN_COLUMNS)
            .where(*conds)
            .order_by(_sort_key(s.start_ns, flt).desc(), s.trace_id.desc(), s.span_id.desc())
            .limit(limit + 1)
        )
        rows = c.execute(stmt).mappings().all()
    items = [SpanRecord.model_validate(span_data(r)) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor("s", last.start_ns, last.trace_id, last.span_id)
    return SpanPage(items=items, next_cursor=next_cursor)


def get_trace(conn: Bind, project_id: int, trace_id: str) -> TraceTree | None:
    """All spans of one trace of ``project_id`` as a tree; ``None`` if it has no spans."""
    s = spans.c
    t = traces.c
    with connect(conn) as c:
        rows = (
            c.execute(
                sa.select(*SPAN_COLUMNS)
                .where(
                    s.project_id == project_id,
                    s.trace_seq
                    == sa.select(t.seq)
                    .where(t.project_id == project_id, t.trace_id == trace_id)
                    .scalar_subquery(),
                )
                .order_by(s.start_ns, s.span_id)
            )
            .mappings()
            .all()
        )
        if not rows:
            return None
        trace_row = (
            c.execute(
                sa.select(*TRACE_COLUMNS).where(t.project_id == project_id, t.trace_id == trace_id)
            )
            .mappings()
            .first()
        )
    nodes = [SpanNode.model_validate(span_data(r)) for r in rows]
    summary = trace_summary(trace_row) if trace_row is not None else _summary_of(nodes)
    return TraceTree(trace=summary, roots=_build_tree(nodes))


def _build_tree(nodes: list[SpanNode]) -> list[SpanNode]:
    """Nest ``nodes`` (sorted by start) under their parents; the rest become roots.

    A span is a root when it has no parent or its parent is not among ``nodes``. Malformed
    data must not make spans disappear either: should parent links form a cycle, the earliest
    span no root reaches is cut from its parent and becomes a root too.
    """
    by_id = {n.span_id: n for n in nodes}
    parent_of: dict[str, SpanNode] = {}
    roots: list[SpanNode] = []
    for node in nodes:
        parent = by_id.get(node.parent_span_id) if node.parent_span_id else None
        if parent is None or parent is node:
            roots.append(node)
        else:
            parent.children.append(node)
            parent_of[node.span_id] = parent
    reached: set[str] = set()
    pending = list(roots)
    while True:
        while pending:
            node = pending.pop()
            if node.span_id not in reached:
                reached.add(node.span_id)
                pending.extend(node.children)
        if len(reached) == len(by_id):
            break
        # Only spans on a cycle are left: cut the cycle at its earliest span.
        orphan = next(n for n in nodes if n.span_id not in reached)
        parent_of[orphan.span_id].children.remove(orphan)
        roots.append(orphan)
        pending.append(orphan)
    roots.sort(key=lambda n: (n.start_ns, n.span_id))
    return roots


def _summary_of(nodes: list[SpanNode]) -> TraceSummary:
    """A summary computed from the spans, for a trace whose ``traces`` row is missing."""
    first = next((n for n in nodes if n.parent_span_id is None), nodes[0])
    # A client's span of a gateway call is counted with the gateway's span, as in the row.
    counted = [n for n in nodes if n.duplicate_of is None]
    known = [n.cost_usd for n in counted if n.cost_usd is not None]
    row: dict[str, Any] = {
        "trace_id": first.trace_id,
        "name": first.name,
        "start_ns": min(n.start_ns for n in nodes),
        "end_ns": max(n.end_ns for n in nodes),
        "span_count": len(nodes),
        "error_count": sum(n.status == "error" for n in nodes),
        "llm_count": sum(n.is_llm for n in counted),
        "input_tokens": sum(n.input_tokens or 0 for n in counted),
        "output_tokens": sum(n.output_tokens or 0 for n in counted),
        "cost_usd": sum(known) if known else None,
    }
    for field in ("user_id", "session_id", "feature", "tenant", "service_name"):
        row[field] = next((getattr(n, field) for n in nodes if getattr(n, field)), None)
    return trace_summary(row)
