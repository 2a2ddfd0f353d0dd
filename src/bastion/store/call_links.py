"""One call, counted once: the gateway's span of a call and a client's span of the same call.

An application instrumented with OpenTelemetry (the ``openai-v2`` instrumentation, OpenLLMetry,
…) that calls through the gateway with a ``traceparent`` reports each call as an LLM span of
its own, and the gateway records the same call: two LLM spans in one trace. The gateway's span
is the authority for tokens and cost (it saw the served model, the real usage and the price).
The client's span is kept and shown, with ``duplicate_of`` set to the gateway span's id, and
is counted nowhere: not in its trace's row, not in the hourly and day roll-ups, and every query
that reads raw spans for numbers skips it (``duplicate_of IS NULL``).

**Which spans are one call.** A gateway span G (``request_id`` set: only the gateway sets it)
with a parent, and a client LLM span C of the same trace (not a gateway span, not linked yet):

1. C is G's parent: the client sent its own span's context (what HTTP client instrumentation
   does, or an application injecting ``traceparent`` inside the client span); else
2. G's parent is a span that is not an LLM call (an HTTP client span) and C is its parent; else
3. G's parent is not an LLM call (or not stored yet) and C is G's sibling asking for the same
   model: the application injected its own span's context around the call. Of several such
   siblings, the one that started nearest to G.

A gateway span takes at most one client span (a client span holding two gateway calls, such as
an SDK retry, keeps the second one counted: the gateway served both) and links are never undone.

**Any arrival order.** Spans of a trace come in any order, in any batches, from any worker, or
replayed from the spool. So the link is made by whichever of the spans comes last, inside the
transaction that writes it, after its spans are inserted: for each trace of the batch that holds
a gateway span with a parent (a partial index of those lists them) and where the batch brought
a span that can complete a link (a gateway span, a client LLM span, or a gateway span's
parent), the trace's spans are read and matched. Every stored span is counted when inserted;
a client span linked now, in this batch or long after it was counted, is taken out again: its
trace row loses its tokens, cost and the call, and a negative roll-up delta (merged into the
batch's own) takes it out of its hour and day. On PostgreSQL two transactions writing spans of
one trace take turns on the trace's row (each upserts it before this runs), so the later one
sees the earlier one's spans; on SQLite one writer runs at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from bastion.store.aggregates import RollupTotals
from bastion.store.schema import spans, traces
from bastion.tracing.model import MODEL_OPERATIONS, Span

__all__ = ["CallSpan", "count_calls_once", "match_calls"]

_GATEWAY_SERVICE = "bastion-gateway"
_COLUMNS = (
    "span_id", "parent_span_id", "request_id", "duplicate_of", "name", "operation",
    "request_model", "response_model", "provider", "start_ns", "end_ns", "status_code",
    "error_class", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "ttft_ms",
    "user_id", "feature", "tenant",
)  # fmt: skip


@dataclass(slots=True)
class CallSpan:
    """What matching needs of a stored span (and what counting it out needs)."""

    span_id: str
    parent_span_id: str | None
    request_id: str | None
    duplicate_of: str | None
    operation: str | None
    request_model: str | None
    start_ns: int
    span: Span | None = None  # the span's counted fields, for taking it out of the roll-ups

    @property
    def is_llm(self) -> bool:
        return self.operation in MODEL_OPERATIONS or self.request_model is not None

    @property
    def is_gateway(self) -> bool:
        return self.request_id is not None


def match_calls(trace: Sequence[CallSpan]) -> list[tuple[str, str]]:
    """New ``(client span id, gateway span id)`` links among the stored spans of one trace."""
    by_id = {s.span_id: s for s in trace}
    taken = {s.duplicate_of for s in trace if s.duplicate_of is not None}
    free = {s.span_id: s for s in trace if s.is_llm and not s.is_gateway and s.duplicate_of is None}
    gateways = sorted(
        (s for s in trace if s.is_gateway and s.is_llm and s.parent_span_id is not None),
        key=lambda s: (s.start_ns, s.span_id),
    )
    links: list[tuple[str, str]] = []
    for gateway in gateways:
        if gateway.span_id in taken or not free:
            continue
        client = _client_of(gateway, by_id, free)
        if client is not None:
            del free[client.span_id]
            links.append((client.span_id, gateway.span_id))
    return links


def _client_of(
    gateway: CallSpan, by_id: dict[str, CallSpan], free: dict[str, CallSpan]
) -> CallSpan | None:
    parent_id = gateway.parent_span_id
    direct = free.get(parent_id or "")
    if direct is not None:
        return direct
    parent = by_id.get(parent_id or "")
    if parent is not None and parent.is_llm:
        return None  # an LLM span already linked or a gateway span: not another client's
    if parent is not None and parent.parent_span_id in free:
        return free[parent.parent_span_id]
    siblings = [
        s
        for s in free.values()
        if s.parent_span_id == parent_id and s.request_model == gateway.request_model
    ]
    if not siblings:
        return None
    return min(siblings, key=lambda s: (abs(s.start_ns - gateway.start_ns), s.span_id))


def _may_link(span: Span) -> bool:
    """False for the spans that can never complete a link: the gateway's own calls made
    without a caller's context (nearly all gateway traffic) and its event spans."""
    if span.request_id is not None:
        return span.parent_span_id is not None
    return not (span.service_name == _GATEWAY_SERVICE and span.operation == "event")


def count_calls_once(
    conn: sa.Connection,
    batch: Iterable[tuple[int, str, int, Span]],
    rollups: RollupTotals,
) -> RollupTotals:
    """Link the client spans of gateway calls that ``batch`` (``(project id, trace id, trace
    seq, span)``, its spans inserted already) completes, take them out of their trace rows and
    return ``rollups`` with them taken out too (``rollups`` itself is left as it was)."""
    # Most batches link nothing: keep their cost to one pass over the spans and one query.
    candidates = [item for item in batch if _may_link(item[3])]
    if not candidates:
        return rollups
    parents = _gateway_parents(conn, {(p, seq) for p, _, seq, _ in candidates})
    if not parents:
        return rollups
    touched: dict[tuple[int, int], tuple[str, list[Span]]] = {}
    for project_id, trace_id, seq, span in candidates:
        if (project_id, seq) in parents:
            touched.setdefault((project_id, seq), (trace_id, []))[1].append(span)
    relevant = [
        key
        for key, (_, batch_spans) in touched.items()
        if any(_completes(s, parents[key]) for s in batch_spans)
    ]
    if not relevant:
        return rollups
    taken_out: list[tuple[int, Span]] = []
    for (project_id, seq), trace in _load(conn, relevant).items():
        links = match_calls(trace)
        if not links:
            continue
        clients = {s.span_id: s for s in trace}
        conn.execute(
            sa.update(spans)
            .where(
                spans.c.project_id == sa.bindparam("p"),
                spans.c.trace_seq == sa.bindparam("seq"),
                spans.c.span_id == sa.bindparam("client"),
            )
            .values(duplicate_of=sa.bindparam("gateway")),
            [{"p": project_id, "seq": seq, "client": c, "gateway": g} for c, g in links],
        )
        linked = [clients[c].span for c, _ in links]
        _take_out_of_trace(conn, project_id, touched[(project_id, seq)][0], linked)
        taken_out.extend((project_id, s) for s in linked if s is not None)
    if not taken_out:
        return rollups
    out = RollupTotals()
    out.merge(rollups)
    out.merge(RollupTotals.of(taken_out).negated())
    return out


def _completes(span: Span, gateway_parents: set[str]) -> bool:
    """Whether ``span`` arriving can complete a link in a trace whose gateway spans have
    ``gateway_parents`` as parents."""
    if span.request_id is not None:
        return True  # a gateway span with a parent (the others were filtered out)
    return span.is_llm or span.span_id in gateway_parents


def _gateway_parents(
    conn: sa.Connection, touched: set[tuple[int, int]]
) -> dict[tuple[int, int], set[str]]:
    """Per trace of ``touched`` (project id, trace seq) holding gateway spans with a parent,
    those parents' ids."""
    s = spans.c
    found: dict[tuple[int, int], set[str]] = {}
    for project_id, seqs in _by_project(touched).items():
        rows = conn.execute(
            sa.select(s.trace_seq, s.parent_span_id).where(
                s.project_id == project_id,
                # The partial index's own condition, so the planner can use it.
                s.request_id.is_not(None),
                s.parent_span_id.is_not(None),
                _among(s.trace_seq, seqs, conn.dialect.name),
            )
        )
        for seq, parent in rows:
            found.setdefault((project_id, seq), set()).add(parent)
    return found


def _by_project(keys: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    by_project: dict[int, list[int]] = {}
    for project_id, seq in keys:
        by_project.setdefault(project_id, []).append(seq)
    return by_project


def _among(column: sa.Column[int], values: list[int], dialect: str) -> sa.ColumnElement[bool]:
    """``column IN values`` with the values as one parameter: binding a batch's hundreds of
    trace numbers one by one cost more than running the query (~20 µs a span on PostgreSQL)."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, values, type_=postgresql.ARRAY(sa.BigInteger)))
    each = sa.func.json_each(sa.bindparam(None, orjson.dumps(values).decode())).table_valued(
        "value"
    )
    return column.in_(sa.select(each.c.value))


def _load(
    conn: sa.Connection, keys: list[tuple[int, int]]
) -> dict[tuple[int, int], list[CallSpan]]:
    """The stored spans of the traces ``keys`` (project id, trace seq), as call spans."""
    s = spans.c
    columns = [s.trace_seq, *(s[name] for name in _COLUMNS)]
    out: dict[tuple[int, int], list[CallSpan]] = {}
    for project_id, seqs in _by_project(keys).items():
        rows = conn.execute(
            sa.select(*columns).where(
                s.project_id == project_id, _among(s.trace_seq, seqs, conn.dialect.name)
            )
        ).mappings()
        for row in rows:
            out.setdefault((project_id, row["trace_seq"]), []).append(_call_span(row))
    return out


def _call_span(row: Any) -> CallSpan:
    span = Span(
        trace_id="",
        span_id=row["span_id"],
        name=row["name"],
        start_ns=row["start_ns"],
        end_ns=row["end_ns"],
        parent_span_id=row["parent_span_id"],
        status_code=row["status_code"],
        operation=row["operation"],
        provider=row["provider"],
        request_model=row["request_model"],
        response_model=row["response_model"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_tokens=row["cached_tokens"],
        cost_usd=row["cost_usd"],
        ttft_ms=row["ttft_ms"],
        error_class=row["error_class"],
        user_id=row["user_id"],
        feature=row["feature"],
        tenant=row["tenant"],
    )
    return CallSpan(
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        request_id=row["request_id"],
        duplicate_of=row["duplicate_of"],
        operation=row["operation"],
        request_model=row["request_model"],
        start_ns=row["start_ns"],
        span=span,
    )


def _take_out_of_trace(
    conn: sa.Connection, project_id: int, trace_id: str, linked: Sequence[Span | None]
) -> None:
    """Subtract the linked client spans' call, tokens and cost from their trace's row (the
    writer added them when the spans were inserted)."""
    found = [s for s in linked if s is not None]
    t = traces.c
    values: dict[str, Any] = {
        "llm_count": t.llm_count - len(found),
        "input_tokens": t.input_tokens - sum(s.input_tokens or 0 for s in found),
        "output_tokens": t.output_tokens - sum(s.output_tokens or 0 for s in found),
    }
    costs = [s.cost_usd for s in found if s.cost_usd is not None]
    if costs:
        values["cost_usd"] = t.cost_usd - sum(costs)
    conn.execute(
        sa.update(traces).where(t.project_id == project_id, t.trace_id == trace_id).values(values)
    )
