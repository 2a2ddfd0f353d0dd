"""A project where two people, their sessions, a dataset made from their traces, an eval
run over it, a dead letter and pending roll-up counters all exist; and a second project
holding the same user id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa

from bastion.store.schema import metadata
from bastion.tracing.model import Span
from tests.retention.support import (
    dataset_and_run,
    new_trace_id,
    project,
    reject,
    span,
    trace,
    write,
)


@dataclass
class World:
    pid: int
    other_pid: int
    alice: list[list[Span]]  # A1 (session s-a), A2 (session s-shared), A3 (alice on a child)
    bob: list[list[Span]]  # B1 (session s-shared), B2 (session s-b)
    eval_trace: list[Span]  # an eval run's call of the item made from A1's first model call
    run_id: str


def build(engine: sa.Engine) -> World:
    pid, other_pid = project(engine), project(engine, "other")
    a1 = trace(days_ago=3, text="ALICE-SECRET-1", user="alice", session="s-a")
    a2 = trace(days_ago=2, text="ALICE-SECRET-2", user="alice", session="s-shared")
    # Bob's trace row, where one span is Alice's: found by the scan of spans.
    a3_id = new_trace_id()
    a3_root = span(a3_id, days_ago=1, text="ALICE-SECRET-3 root", user="bob", llm=False)
    a3 = [
        a3_root,
        span(a3_id, days_ago=1, parent=a3_root.span_id, text="ALICE-SECRET-3", user="alice"),
    ]
    b1 = trace(days_ago=2, text="BOB-TEXT-1", user="bob", session="s-shared", child_user="bob")
    b2 = trace(days_ago=1, text="BOB-TEXT-2", user="bob", session="s-b")
    write(engine, pid, a1 + a3 + b1 + b2)
    write(engine, pid, a2, defer=True)  # roll-up counters still waiting to be folded
    eval_call = trace(days_ago=0.5, text="ALICE-SECRET-1 via eval", children=1)
    write(engine, pid, eval_call)
    first_item = f"{a1[1].trace_id}:{a1[1].span_id}"
    run = dataset_and_run(engine, pid, "prod", result_traces={first_item: eval_call[0].trace_id})
    reject(engine, pid, span(new_trace_id(), days_ago=0, text="ALICE-SECRET-REJECT", user="alice"))
    write(
        engine,
        other_pid,
        trace(days_ago=1, text="ALICE-OTHER-SECRET", user="alice", session="s-shared"),
    )
    dataset_and_run(engine, other_pid, "prod")
    return World(pid, other_pid, [a1, a2, a3], [b1, b2], eval_call, run.run_id)


def project_digest(engine: sa.Engine, project_id: int) -> dict[str, str]:
    """A digest of one project's rows in every table that has a project column."""
    out = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if "project_id" not in table.c:
                continue
            rows = conn.execute(sa.select(table).where(table.c.project_id == project_id)).all()
            encoded = sorted(repr(tuple(row)) for row in rows)
            out[table.name] = hashlib.sha256("\n".join(encoded).encode()).hexdigest()
    return out
