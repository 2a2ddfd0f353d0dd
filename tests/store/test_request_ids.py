"""Spans and traces found by the gateway's request id, through its index (both databases)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.store.queries import SpanFilter, TraceFilter, list_spans, list_traces
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span


def _gateway_span(request_id: str, start_ns: int) -> Span:
    return Span(
        os.urandom(16).hex(), os.urandom(8).hex(), "chat chat", start_ns, start_ns + 5,
        operation="chat", request_model="chat", service_name="bastion-gateway",
        request_id=request_id,
    )  # fmt: skip


def test_a_request_id_finds_its_span_and_trace(engine: sa.Engine) -> None:
    wanted = _gateway_span("req-wanted", 2_000)
    others = [_gateway_span(f"req-{i}", 1_000 + i) for i in range(20)]
    child = Span(wanted.trace_id, "c" * 16, "tool", 2_001, 2_002, parent_span_id=wanted.span_id)
    SpanWriter(engine).write([(1, s) for s in [*others, wanted, child]])
    SpanWriter(engine).write([(2, _gateway_span("req-wanted", 3_000))])  # another project's
    with engine.connect() as conn:
        spans = list_spans(conn, 1, SpanFilter(request_id="req-wanted")).items
        traces = list_traces(conn, 1, TraceFilter(request_id="req-wanted")).items
        missing = list_traces(conn, 1, TraceFilter(request_id="req-none")).items
    assert [(s.span_id, s.request_id) for s in spans] == [(wanted.span_id, "req-wanted")]
    assert [(t.trace_id, t.span_count) for t in traces] == [(wanted.trace_id, 2)]
    assert missing == []


def test_request_id_lookups_use_its_index_on_sqlite(engine: sa.Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans by its statistics; its partial index is declared the same")
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            list_spans(conn, 1, SpanFilter(request_id="req-1"))
            list_traces(conn, 1, TraceFilter(request_id="req-1"))
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    with engine.connect() as conn:
        plans = [
            " | ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in statements
        ]
    assert len(plans) == 2
    assert "ix_spans_project_id_request_id" in plans[0], plans[0]
    assert "start_ns" not in plans[0], plans[0]  # no walk through the project's time index
    assert "ix_spans_project_id_request_id" in plans[1], plans[1]
    assert "ix_traces_project_id_start_ns" not in plans[1], plans[1]
