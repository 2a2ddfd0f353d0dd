"""Pieces shared by the read queries: filters, keyset cursors, time conversion, connections.

The public names are re-exported by :mod:`bastion.store.queries`; import them from there.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from bastion.store.schema import spans
from bastion.tracing.model import MODEL_OPERATIONS, StatusCode

__all__ = [
    "MAX_LIMIT",
    "Bind",
    "SpanFilter",
    "TraceFilter",
    "check_limit",
    "connect",
    "decode_cursor",
    "encode_cursor",
    "is_counted",
    "latency_ns_at_least",
    "ns_to_datetime",
    "span_conditions",
    "span_is_error",
    "text_condition",
]

MAX_LIMIT = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ERROR = int(StatusCode.ERROR)

Bind = sa.Connection | sa.Engine


class TraceFilter(BaseModel):
    """What to select; every field is optional and the set ones must all match.

    For :func:`list_traces` the fields describe the trace (times are its start, latency is
    end minus start, ``model``/``error_class``/``text`` match when *any* of its spans does).
    For :func:`list_spans` and :func:`metrics_summary` they describe each span on its own.
    """

    model_config = ConfigDict(extra="forbid")

    start_ns: int | None = Field(None, description="start at or after this time (Unix ns)")
    end_ns: int | None = Field(None, description="start before this time (Unix ns, exclusive)")
    user_id: str | None = None
    session_id: str | None = None
    feature: str | None = None
    tenant: str | None = None
    model: str | None = Field(None, description="model asked for (request) or served (response)")
    status: Literal["ok", "error"] | None = Field(
        None, description="error: status ERROR or an error class; ok: anything else"
    )
    error_class: str | None = None
    text: str | None = Field(
        None,
        description="substring of an input or output, case-insensitive (ASCII-only on SQLite);"
        " scans every candidate in the time range, so keep that range bounded",
    )
    min_latency_ms: float | None = Field(None, ge=0)
    min_cost_usd: float | None = Field(None, ge=0)
    service_name: str | None = None
    name: str | None = Field(None, description="exact name of the trace (its root span) or span")
    request_id: str | None = Field(
        None,
        description="the gateway's x-request-id: its call's span (for traces: the trace holding"
        " it)",
    )


class SpanFilter(TraceFilter):
    """A :class:`TraceFilter` with span-only criteria, for :func:`list_spans` and metrics."""

    trace_id: str | None = None
    operation: str | None = Field(None, description="LLM operation, e.g. chat or embeddings")
    provider: str | None = None
    prompt_name: str | None = None
    release_id: str | None = None
    llm_only: bool = Field(False, description="only spans that describe a model call")


def span_only_fields(flt: TraceFilter) -> list[str]:
    """Names of the :class:`SpanFilter` criteria set in ``flt`` (they have no trace meaning)."""
    if not isinstance(flt, SpanFilter):
        return []
    names = ["trace_id", "operation", "provider", "prompt_name", "release_id"]
    found = [n for n in names if getattr(flt, n) is not None]
    if flt.llm_only:
        found.append("llm_only")
    return found


@contextmanager
def connect(bind: Bind) -> Iterator[sa.Connection]:
    """Use ``bind`` as is when it is a connection, else borrow one from the engine."""
    if isinstance(bind, sa.Engine):
        with bind.connect() as conn:
            yield conn
    else:
        yield bind


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")


def ns_to_datetime(ns: int) -> datetime:
    """A UTC datetime for Unix nanoseconds (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def latency_ns_at_least(min_latency_ms: float) -> int:
    """The smallest whole number of nanoseconds that is at least ``min_latency_ms``."""
    # Decimal keeps 0.1 ms from becoming 100000.00000000001 ns and excluding an exact match.
    return math.ceil(Decimal(repr(min_latency_ms)) * 1_000_000)


def encode_cursor(kind: str, *values: int | str) -> str:
    """An opaque, URL-safe token for a keyset position."""
    raw = orjson.dumps([kind, *values])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list[Any]:
    """The values of a cursor made by :func:`encode_cursor`; ``ValueError`` if it is not one."""
    what = "trace" if kind == "t" else "span"
    problem = f"invalid cursor {cursor[:60]!r}: pass the next_cursor of a previous {what} page"
    if not isinstance(cursor, str) or not cursor or len(cursor) > 400:
        raise ValueError(problem)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(problem) from exc
    if not isinstance(value, list) or len(value) != len(types) + 1 or value[0] != kind:
        raise ValueError(problem)
    values = value[1:]
    for item, expected in zip(values, types, strict=True):
        if type(item) is not expected:
            raise ValueError(problem)
    return values


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def text_condition(
    s: sa.ColumnCollection[str, sa.Column[Any]], text: str, dialect: str
) -> sa.ColumnElement[bool]:
    """``input`` or ``output`` of span columns ``s`` contains ``text``, ignoring case."""
    pattern = like_pattern(text)
    if dialect == "sqlite":
        # SQLite's LIKE already ignores ASCII case; lower() on both sides would only add cost.
        return sa.or_(s.input.like(pattern, escape="\\"), s.output.like(pattern, escape="\\"))
    return sa.or_(s.input.ilike(pattern, escape="\\"), s.output.ilike(pattern, escape="\\"))


def span_is_error(s: sa.ColumnCollection[str, sa.Column[Any]]) -> sa.ColumnElement[bool]:
    return sa.or_(s.status_code == _ERROR, s.error_class.is_not(None))


def is_llm(s: sa.ColumnCollection[str, sa.Column[Any]]) -> sa.ColumnElement[bool]:
    return sa.or_(s.operation.in_(sorted(MODEL_OPERATIONS)), s.request_model.is_not(None))


def is_counted(s: sa.ColumnCollection[str, sa.Column[Any]]) -> sa.ColumnElement[bool]:
    """Not a client's span of a call the gateway traced too (``bastion.store.call_links``):
    what every count, token sum and cost over raw spans must hold, so a call counts once."""
    return s.duplicate_of.is_(None)


def span_conditions(flt: TraceFilter, dialect: str) -> list[sa.ColumnElement[bool]]:
    """WHERE conditions on ``spans`` for ``flt`` read span by span (project not included)."""
    s = spans.c
    conds: list[sa.ColumnElement[bool]] = []
    if flt.start_ns is not None:
        conds.append(s.start_ns >= flt.start_ns)
    if flt.end_ns is not None:
        conds.append(s.start_ns < flt.end_ns)
    equal = {
        "user_id": s.user_id,
        "session_id": s.session_id,
        "feature": s.feature,
        "tenant": s.tenant,
        "error_class": s.error_class,
        "service_name": s.service_name,
        "name": s.name,
        "request_id": s.request_id,
    }
    if isinstance(flt, SpanFilter):
        equal |= {
            "trace_id": s.trace_id,
            "operation": s.operation,
            "provider": s.provider,
            "prompt_name": s.prompt_name,
            "release_id": s.release_id,
        }
        if flt.llm_only:
            conds.append(is_llm(s))
    for field, column in equal.items():
        value = getattr(flt, field)
        if value is not None:
            conds.append(column == value)
    if flt.model is not None:
        conds.append(sa.or_(s.request_model == flt.model, s.response_model == flt.model))
    if flt.status == "error":
        conds.append(span_is_error(s))
    elif flt.status == "ok":
        conds.append(sa.and_(s.status_code != _ERROR, s.error_class.is_(None)))
    if flt.text:
        conds.append(text_condition(s, flt.text, dialect))
    if flt.min_latency_ms is not None:
        conds.append(s.latency_ms >= flt.min_latency_ms)
    if flt.min_cost_usd is not None:
        conds.append(s.cost_usd >= flt.min_cost_usd)
    return conds
