"""What the sessions pages read: the sessions of a range, and one session as a thread.

A session is the traces sharing a ``session_id``; both reads go through the traces table's
``(project_id, session_id, start_ns)`` and ``(project_id, start_ns)`` indexes, and a thread's
model calls through the spans' primary key (project, trace seq).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from bastion.store.queries_common import is_llm
from bastion.store.schema import spans, traces
from bastion.ui.payloads import Message, Part, read_payload

__all__ = ["SessionRow", "ThreadTurn", "session_thread", "sessions_in"]

MAX_SESSIONS = 100
SCAN_TRACES = 5_000  # newest traces walked to find the latest sessions
MAX_THREAD_TRACES = 200
MAX_CALLS_PER_TRACE = 20
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session of the list."""

    session_id: str
    traces: int
    first_ns: int
    last_ns: int
    user_id: str | None
    cost_usd: float | None
    errors: int


def sessions_in(conn: sa.Connection, project_id: int, start_s: int) -> list[SessionRow]:
    """The sessions with a trace started since ``start_s``, latest activity first.

    The newest traces are walked backwards (at most :data:`SCAN_TRACES`) to find the latest
    sessions, then only those are summed through the session index: a 30-day range costs no
    more than a day's."""
    t = traces.c
    since = start_s * _NS
    recent = conn.execute(
        sa.select(t.session_id)
        .where(t.project_id == project_id, t.start_ns >= since, t.session_id.is_not(None))
        .order_by(t.start_ns.desc())
        .limit(SCAN_TRACES)
    ).scalars()
    latest: dict[str, None] = {}
    for session_id in recent:
        latest.setdefault(session_id)
        if len(latest) == MAX_SESSIONS:
            break
    if not latest:
        return []
    last = sa.func.max(t.start_ns)
    stmt = (
        sa.select(
            t.session_id,
            sa.func.count(),
            sa.func.min(t.start_ns),
            last,
            sa.func.max(t.user_id),
            sa.func.sum(t.cost_usd),
            sa.func.sum(t.error_count),
        )
        .where(t.project_id == project_id, t.session_id.in_(list(latest)), t.start_ns >= since)
        .group_by(t.session_id)
        .order_by(last.desc(), t.session_id)
    )
    return [
        SessionRow(str(sid), int(n), int(first), int(lst), user, cost, int(errors or 0))
        for sid, n, first, lst, user, cost, errors in conn.execute(stmt)
    ]


@dataclass(slots=True)
class ThreadTurn:
    """One trace of a session: when, its totals, and what was said in its model calls."""

    trace_id: str
    name: str | None
    start_ns: int
    cost_usd: float | None
    error_count: int
    user_id: str | None
    said: list[Message] = field(default_factory=list)
    more_calls: int = 0  # model calls of the trace past MAX_CALLS_PER_TRACE


def _said(input_text: str | None, output_text: str | None) -> list[Message]:
    """A call's new turn: the last message of its input (the history repeats the earlier
    ones) and what it answered."""
    said: list[Message] = []
    asked = read_payload(input_text)
    if asked.kind == "conversation" and asked.messages:
        said.append(asked.messages[-1])
    answered = read_payload(output_text)
    if answered.kind == "conversation":
        said.extend(answered.messages)
    elif answered.kind == "text":
        said.append(Message("assistant", "assistant", [Part("text", text=answered.text)]))
    return said


def session_thread(
    conn: sa.Connection, project_id: int, session_id: str
) -> tuple[list[ThreadTurn], bool]:
    """The session's traces in order with their calls' turns, and whether more traces exist
    than :data:`MAX_THREAD_TRACES`. Empty when the project has no such session."""
    t = traces.c
    found = conn.execute(
        sa.select(t.seq, t.trace_id, t.name, t.start_ns, t.cost_usd, t.error_count, t.user_id)
        .where(t.project_id == project_id, t.session_id == session_id)
        .order_by(t.start_ns, t.seq)
        .limit(MAX_THREAD_TRACES + 1)
    ).all()
    more = len(found) > MAX_THREAD_TRACES
    turns: dict[int, ThreadTurn] = {}
    for seq, trace_id, name, start, cost, errors, user in found[:MAX_THREAD_TRACES]:
        turns[int(seq)] = ThreadTurn(trace_id, name, int(start), cost, int(errors), user)
    if not turns:
        return [], False
    s = spans.c
    calls = conn.execute(
        sa.select(s.trace_seq, s.input, s.output)
        .where(s.project_id == project_id, s.trace_seq.in_(list(turns)), is_llm(s))
        .order_by(s.trace_seq, s.start_ns, s.span_id)
    )
    for seq, input_text, output_text in calls:
        turn = turns[int(seq)]
        if turn.more_calls or len(turn.said) >= 2 * MAX_CALLS_PER_TRACE:
            turn.more_calls += 1
            continue
        turn.said.extend(_said(input_text, output_text))
    return list(turns.values()), more
