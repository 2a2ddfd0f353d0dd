"""Dropping the payload of old spans, keeping their metrics.

A span's payload is what was said: its input and output text, the messages, the prompt
variables, and any free text a producer attached. Dropping it sets ``input`` and ``output``
to NULL and keeps, of the attributes and of each event's attributes, only

- bastion's own attributes (the span contract, :mod:`bastion.tracing.attributes`) other than
  the payload ones (``bastion.input``, ``bastion.output``, ``bastion.prompt.variables``):
  identifiers and decisions that budgets, rate limits and canary analysis read back;
- numbers and flags (usage counts, temperatures, ports).

Every other text, list or map goes: a producer may put content anywhere. Events keep their
name and time. The span's columns (tokens, cost, latency, status and its message, model,
user, session, feature, tenant, prompt and release) are untouched, and so are roll-ups.

Rows are rewritten in batches, oldest first; ``retention_marks`` remembers, per project, the
start time below which the payload is gone, so a pass reads only spans that aged past the
period since the last one. A span stored after a pass went past its start time (a backfill
of old spans) keeps its payload until a pass with ``rescan`` (``bastion retention apply
--rescan``) reads from the start again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bastion.retention.sql import in_index_order
from bastion.store.schema import retention_marks, spans
from bastion.tracing.attributes import INPUT, OUTPUT, PROMPT_VARIABLES

__all__ = [
    "PAYLOAD_ATTRIBUTES",
    "PayloadPage",
    "payload_mark",
    "read_payload_page",
    "scrub_attributes",
    "scrub_events",
    "set_payload_mark",
    "write_scrubbed",
]

PAYLOAD_ATTRIBUTES = frozenset({INPUT, OUTPUT, PROMPT_VARIABLES})
_OWN_PREFIX = "bastion."
_MARK_KIND = "payload"

SpanKey = tuple[int, int, str]  # start_ns, trace_seq, span_id: the order a pass reads in


def scrub_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``attributes`` stays once the payload is dropped (see the module text)."""
    return {
        key: value
        for key, value in attributes.items()
        if (key.startswith(_OWN_PREFIX) and key not in PAYLOAD_ATTRIBUTES)
        or isinstance(value, int | float)  # bool is an int
    }


def scrub_events(events: Any) -> list[Any]:
    """``events`` with each event's attributes scrubbed (names and times stay)."""
    if not isinstance(events, list):
        return []
    out: list[Any] = []
    for event in events:
        if not isinstance(event, dict):
            continue
        attributes = event.get("attributes")
        out.append(
            {
                "name": event.get("name") if isinstance(event.get("name"), str) else "",
                "time_ns": event.get("time_ns") if isinstance(event.get("time_ns"), int) else 0,
                "attributes": scrub_attributes(attributes) if isinstance(attributes, dict) else {},
            }
        )
    return out


def _loads(text: str | None, empty: Any) -> Any:
    try:
        return orjson.loads(text) if text else empty
    except orjson.JSONDecodeError:
        return empty


@dataclass(frozen=True, slots=True)
class PayloadPage:
    """One page of old spans read, and the rewrites it calls for."""

    read: int
    last: SpanKey | None  # where the next page starts after (None: nothing was read)
    rewrites: list[dict[str, Any]]  # parameters of write_scrubbed, only rows that change


def read_payload_page(
    conn: sa.Connection, project_id: int, after: SpanKey | None, cutoff_ns: int, limit: int
) -> PayloadPage:
    """Read up to ``limit`` spans that started before ``cutoff_ns``, after ``after`` (in
    start time, trace seq and span id order), and scrub them in memory."""
    s = spans.c
    where = [s.project_id == project_id, s.start_ns < cutoff_ns]
    if after is not None:
        start, seq, span_id = after
        where += [
            s.start_ns >= start,
            sa.or_(s.start_ns > start, sa.tuple_(s.trace_seq, s.span_id) > sa.tuple_(seq, span_id)),
        ]
    with in_index_order(conn):
        rows = conn.execute(
            sa.select(s.start_ns, s.trace_seq, s.span_id, s.input, s.output, s.attributes, s.events)
            .where(*where)
            .order_by(s.start_ns, s.trace_seq, s.span_id)
            .limit(limit)
        ).all()
    rewrites = []
    for row in rows:
        attributes = _loads(row.attributes, {})
        scrubbed = scrub_attributes(attributes) if isinstance(attributes, dict) else {}
        events = _loads(row.events, [])
        kept_events = scrub_events(events)
        if (
            row.input is not None
            or row.output is not None
            or scrubbed != attributes
            or kept_events != events
        ):
            rewrites.append(
                {
                    "p_project": project_id,
                    "p_seq": row.trace_seq,
                    "p_span": row.span_id,
                    "v_attributes": orjson.dumps(scrubbed).decode(),
                    "v_events": orjson.dumps(kept_events).decode(),
                }
            )
    last = (rows[-1].start_ns, rows[-1].trace_seq, rows[-1].span_id) if rows else None
    return PayloadPage(len(rows), last, rewrites)


def write_scrubbed(conn: sa.Connection, rewrites: list[dict[str, Any]]) -> int:
    """Store the scrubbed rows of a page in the caller's transaction; returns how many."""
    if not rewrites:
        return 0
    s = spans.c
    conn.execute(
        sa.update(spans)
        .where(
            s.project_id == sa.bindparam("p_project"),
            s.trace_seq == sa.bindparam("p_seq"),
            s.span_id == sa.bindparam("p_span"),
        )
        .values(
            input=None,
            output=None,
            attributes=sa.bindparam("v_attributes"),
            events=sa.bindparam("v_events"),
        ),
        rewrites,
    )
    return len(rewrites)


def payload_mark(conn: sa.Connection, project_id: int) -> int | None:
    """The start time (Unix ns) below which the project's payloads are gone, if any."""
    m = retention_marks.c
    value = conn.execute(
        sa.select(m.through_ns).where(m.project_id == project_id, m.kind == _MARK_KIND)
    ).scalar()
    return None if value is None else int(value)


def set_payload_mark(conn: sa.Connection, project_id: int, through_ns: int) -> None:
    """Record, in the caller's transaction, that payloads before ``through_ns`` are gone."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(retention_marks).values(
        project_id=project_id,
        kind=_MARK_KIND,
        through_ns=through_ns,
        updated_at=datetime.now(UTC),
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "kind"],
            set_={"through_ns": stmt.excluded.through_ns, "updated_at": stmt.excluded.updated_at},
        )
    )
