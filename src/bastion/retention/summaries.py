"""Trace summaries made to agree with the spans a deletion left.

A ``traces`` row sums its spans (counts, tokens, cost, first and last times, root, the first
user and session seen). When some of a trace's spans are deleted, the row is computed again
from the spans that remain, by the same rules the writer adds them up with
(:func:`bastion.store.aggregates.trace_rows`); a trace left without spans loses its row. A
client's span of a call the gateway traced too (``duplicate_of`` set) counts as a span but
not as a call, as in the writer (``bastion.store.call_links``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import sqlalchemy as sa

from bastion.retention.sql import among
from bastion.store.aggregates import trace_rows
from bastion.store.schema import spans, traces
from bastion.tracing.model import Span

__all__ = ["lock_traces", "resummarise_traces"]

_SUMMARY_COLUMNS = (
    "start_ns", "end_ns", "root_span_id", "name", "span_count", "error_count", "llm_count",
    "input_tokens", "output_tokens", "cost_usd", "user_id", "session_id", "feature", "tenant",
    "service_name",
)  # fmt: skip
_SPAN_COLUMNS = (
    "trace_seq", "span_id", "parent_span_id", "name", "start_ns", "end_ns", "status_code",
    "operation", "request_model", "input_tokens", "output_tokens", "cost_usd", "error_class",
    "user_id", "session_id", "feature", "tenant", "service_name", "duplicate_of",
)  # fmt: skip


def lock_traces(conn: sa.Connection, project_id: int, trace_ids: Collection[str]) -> set[str]:
    """The traces among ``trace_ids`` whose spans this transaction may delete now.

    On PostgreSQL the trace rows are locked first, skipping the ones a span writer holds (it
    is adding spans to them; the next batch takes them), so a trace row is never summarised
    from spans a concurrent writer is changing. A trace without a row is returned too: its
    spans go whatever happens. SQLite has one writer at a time: every trace is free.
    """
    if conn.dialect.name != "postgresql" or not trace_ids:
        return set(trace_ids)
    t = traces.c
    where = (t.project_id == project_id, among(t.trace_id, sorted(trace_ids), "postgresql"))
    locked = set(
        conn.execute(
            sa.select(t.trace_id)
            .where(*where)
            .order_by(t.trace_id)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    existing = set(conn.execute(sa.select(t.trace_id).where(*where)).scalars())
    return locked | (set(trace_ids) - existing)


def _span(row: Any) -> Span:
    counted = row.duplicate_of is None
    return Span(
        trace_id=str(row.trace_seq),
        span_id=row.span_id,
        name=row.name,
        start_ns=row.start_ns,
        end_ns=row.end_ns,
        parent_span_id=row.parent_span_id,
        status_code=row.status_code,
        error_class=row.error_class,
        # A duplicate of a gateway span is shown, never counted as a call.
        operation=row.operation if counted else None,
        request_model=row.request_model if counted else None,
        input_tokens=row.input_tokens if counted else None,
        output_tokens=row.output_tokens if counted else None,
        cost_usd=row.cost_usd if counted else None,
        user_id=row.user_id,
        session_id=row.session_id,
        feature=row.feature,
        tenant=row.tenant,
        service_name=row.service_name,
    )


def resummarise_traces(
    conn: sa.Connection, project_id: int, trace_ids: Mapping[int, str]
) -> tuple[int, int]:
    """Make the rows of the traces ``trace_ids`` (seq to trace id) agree with their remaining
    spans, in the caller's transaction; returns ``(removed, updated)``: rows deleted (no span
    left) and rewritten."""
    if not trace_ids:
        return 0, 0
    dialect = conn.dialect.name
    s, t = spans.c, traces.c
    rows = conn.execute(
        sa.select(*(s[name] for name in _SPAN_COLUMNS))
        .where(s.project_id == project_id, among(s.trace_seq, sorted(trace_ids), dialect))
        .order_by(s.trace_seq, s.start_ns, s.span_id)
    ).all()
    summaries = trace_rows([(project_id, _span(row)) for row in rows])
    left = {int(summary["trace_id"]) for summary in summaries}
    gone = sorted(trace_id for seq, trace_id in trace_ids.items() if seq not in left)
    removed = 0
    if gone:
        removed = conn.execute(
            sa.delete(traces).where(t.project_id == project_id, among(t.trace_id, gone, dialect))
        ).rowcount
    if summaries:
        # By the primary key (project, trace id): the seq's own index does not lead with
        # the project, and SQLite would rather scan the project's traces.
        conn.execute(
            sa.update(traces)
            .where(t.project_id == project_id, t.trace_id == sa.bindparam("p_trace"))
            .values({name: sa.bindparam(f"v_{name}") for name in _SUMMARY_COLUMNS}),
            [
                {
                    "p_trace": trace_ids[int(summary["trace_id"])],
                    **{f"v_{name}": summary[name] for name in _SUMMARY_COLUMNS},
                }
                for summary in summaries
            ],
        )
    return removed, len(summaries)
