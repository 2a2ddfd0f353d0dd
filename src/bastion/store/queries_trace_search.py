"""Trace search for people reading traces: every trace filter of the read API, criteria on the
spans a trace holds (provider, prompt name, version and label, release and arm), and an order
by time, latency, tokens, cost or size, paginated by keyset in either direction.

:func:`bastion.store.queries.list_traces` stays the API's listing (newest first); this module
is what the web UI's traces list reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects.postgresql import JSONB

from bastion.store.queries_common import (
    Bind,
    TraceFilter,
    check_limit,
    connect,
    decode_cursor,
    encode_cursor,
)
from bastion.store.queries_traces import (
    TRACE_COLUMNS,
    TracePage,
    trace_conditions,
    trace_summary,
)
from bastion.store.schema import spans, traces
from bastion.tracing.attributes import PROMPT_LABEL, RELEASE_ARM

__all__ = ["SORT_KEYS", "SortKey", "TraceOrder", "TraceSearch", "first_token_ms", "search_traces"]

SortKey = Literal["time", "latency", "tokens", "cost", "spans"]
SORT_KEYS: tuple[SortKey, ...] = ("time", "latency", "tokens", "cost", "spans")
# A trace without a known cost sorts as if it cost less than nothing: last when the most
# expensive come first, first the other way round, and never lost between pages.
_NO_COST = -1.0


class TraceSearch(TraceFilter):
    """A :class:`TraceFilter` plus criteria met when *any* span of the trace meets them."""

    provider: str | None = None
    prompt_name: str | None = None
    prompt_version: int | None = Field(None, ge=1, le=2**31 - 1)
    prompt_label: str | None = Field(
        None, description="the label the gateway resolved the prompt by"
    )
    release_id: str | None = None
    release_arm: str | None = Field(None, description="the rollout arm: stable or candidate")


class TraceOrder(BaseModel):
    """What to sort traces by; ties are broken by trace id, in the same direction."""

    key: SortKey = "time"
    descending: bool = True


def _attribute(s: Any, name: str, dialect: str) -> sa.ColumnElement[Any]:
    """The string attribute ``name`` of span columns ``s`` (their JSON ``attributes``)."""
    if dialect == "postgresql":
        extracted: sa.ColumnElement[Any] = sa.cast(s.attributes, JSONB)[name].astext
    else:
        extracted = sa.func.json_extract(s.attributes, f'$."{name}"')
    return extracted


def _span_criteria(search: TraceSearch, dialect: str) -> list[sa.ColumnElement[bool]]:
    s = spans.c
    found: list[sa.ColumnElement[bool]] = []
    if search.provider is not None:
        found.append(s.provider == search.provider)
    if search.prompt_name is not None:
        found.append(s.prompt_name == search.prompt_name)
    if search.prompt_version is not None:
        found.append(s.prompt_version == search.prompt_version)
    if search.prompt_label is not None:
        # Only spans that rendered a registry prompt carry a label: the partial index bounds it.
        found.append(s.prompt_name.is_not(None))
        found.append(_attribute(s, PROMPT_LABEL, dialect) == search.prompt_label)
    if search.release_id is not None:
        found.append(s.release_id == search.release_id)
    if search.release_arm is not None:
        found.append(s.release_id.is_not(None))
        found.append(_attribute(s, RELEASE_ARM, dialect) == search.release_arm)
    return found


def _sort_expression(order: TraceOrder, search: TraceFilter) -> sa.ColumnElement[Any]:
    t = traces.c
    if order.key == "latency":
        return t.end_ns - t.start_ns
    if order.key == "tokens":
        return t.input_tokens + t.output_tokens
    if order.key == "cost":
        return sa.func.coalesce(t.cost_usd, _NO_COST)
    if order.key == "spans":
        return t.span_count
    # A request id selects a handful of traces, best found through its index and then sorted;
    # an expression keeps SQLite from walking the time index instead (see list_traces).
    return t.start_ns + 0 if search.request_id is not None else t.start_ns


def _cursor_kind(order: TraceOrder) -> str:
    return f"trace-{order.key}-{'desc' if order.descending else 'asc'}"


def _sort_value(order: TraceOrder, item: Any) -> int | str:
    """The sort key of ``item`` for a cursor (a cost as the exact text of its float)."""
    if order.key == "latency":
        return int(item.end_ns - item.start_ns)
    if order.key == "tokens":
        return int(item.total_tokens)
    if order.key == "cost":
        return repr(float(item.cost_usd if item.cost_usd is not None else _NO_COST))
    if order.key == "spans":
        return int(item.span_count)
    return int(item.start_ns)


def _after(order: TraceOrder, key: sa.ColumnElement[Any], cursor: str) -> sa.ColumnElement[bool]:
    """Rows strictly after the cursor's position in ``order``."""
    value_type: type = str if order.key == "cost" else int
    try:
        value, trace_id = decode_cursor(cursor, _cursor_kind(order), (value_type, str))
        if order.key == "cost":
            value = float(value)
    except ValueError as exc:
        raise ValueError(
            f"invalid cursor {cursor[:60]!r}: pass the next_cursor of a previous page sorted"
            f" the same way ({order.key}, {'descending' if order.descending else 'ascending'})"
        ) from exc
    t = traces.c
    if order.descending:
        return sa.or_(key < value, sa.and_(key == value, t.trace_id < trace_id))
    return sa.or_(key > value, sa.and_(key == value, t.trace_id > trace_id))


def _ordering(
    order: TraceOrder, key: sa.ColumnElement[Any], trace_id: sa.ColumnElement[str]
) -> tuple[sa.UnaryExpression[Any], sa.UnaryExpression[str]]:
    if order.descending:
        return key.desc(), trace_id.desc()
    return key.asc(), trace_id.asc()


def search_traces(
    conn: Bind,
    project_id: int,
    search: TraceSearch | None = None,
    *,
    order: TraceOrder | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> TracePage:
    """Traces of ``project_id`` matching ``search``, in ``order`` (newest first by default).

    Pass the page's ``next_cursor`` back as ``cursor``, with the same order, for the next page.
    ``limit`` is 1 to 1000; a malformed cursor raises ``ValueError``.
    """
    check_limit(limit)
    flt = search or TraceSearch()
    how = order or TraceOrder()
    t = traces.c
    s = spans.c
    with connect(conn) as c:
        dialect = c.dialect.name
        conds = trace_conditions(project_id, flt, dialect)
        criteria = _span_criteria(flt, dialect)
        if criteria:
            inner = [s.project_id == project_id, s.trace_seq == t.seq, *criteria]
            if flt.start_ns is not None:
                inner.append(s.start_ns >= flt.start_ns)
            conds.append(sa.exists().where(*inner))
        key = _sort_expression(how, flt)
        if cursor is not None:
            conds.append(_after(how, key, cursor))
        stmt = (
            sa.select(*TRACE_COLUMNS)
            .where(*conds)
            .order_by(*_ordering(how, key, t.trace_id))
            .limit(limit + 1)
        )
        rows = c.execute(stmt).mappings().all()
    items = [trace_summary(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(_cursor_kind(how), _sort_value(how, last), last.trace_id)
    return TracePage(items=items, next_cursor=next_cursor)


def first_token_ms(conn: Bind, project_id: int, trace_ids: Sequence[str]) -> dict[str, float]:
    """Time to first token of each trace's earliest model call that reported one, by trace id
    (traces without one are left out)."""
    if not trace_ids:
        return {}
    t = traces.c
    s = spans.c
    stmt = (
        sa.select(t.trace_id, s.ttft_ms, s.start_ns)
        .select_from(
            traces.join(spans, sa.and_(s.project_id == t.project_id, s.trace_seq == t.seq))
        )
        .where(
            t.project_id == project_id,
            t.trace_id.in_(list(trace_ids)),
            s.project_id == project_id,
            s.ttft_ms.is_not(None),
        )
    )
    earliest: dict[str, tuple[int, float]] = {}
    with connect(conn) as c:
        for trace_id, ttft, start_ns in c.execute(stmt):
            seen = earliest.get(trace_id)
            if seen is None or start_ns < seen[0]:
                earliest[trace_id] = (start_ns, float(ttft))
    return {trace_id: ttft for trace_id, (_, ttft) in earliest.items()}
