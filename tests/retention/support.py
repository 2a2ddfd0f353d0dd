"""Stored data for the retention and erasure tests: spans written by the real span writer,
datasets, eval runs and dead letters made by the real stores, and checks over every table."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.evals import store
from bastion.evals.from_traces import TraceSelection, snapshot
from bastion.evals.scorers.base import Score
from bastion.store.dead_letters import Rejected, store_rejects
from bastion.store.schema import eval_runs, metadata, spans, traces
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode

NOW_NS = time.time_ns()
DAY_NS = 86_400 * 1_000_000_000


def new_trace_id() -> str:
    return os.urandom(16).hex()


def span(
    trace_id: str,
    *,
    days_ago: float,
    parent: str | None = None,
    text: str = "hello",
    user: str | None = None,
    session: str | None = None,
    llm: bool = True,
    error: bool = False,
    variables: dict[str, Any] | None = None,
) -> Span:
    """One span started ``days_ago`` before now; an LLM call with text in every payload place
    (input, output, messages attribute, prompt variables, an event) unless ``llm`` is off."""
    start = NOW_NS - int(days_ago * DAY_NS)
    attributes: dict[str, Any] = {
        "gen_ai.input.messages": orjson.dumps([{"role": "user", "content": text}]).decode(),
        "app.note": f"note {text}",
        "bastion.feature": "support",
        "bastion.gateway.api": "chat",
        "gen_ai.request.temperature": 0.2,
        "server.port": 443,
        "bastion.prompt.variables": variables or {"question": text},
    }
    return Span(
        trace_id=trace_id,
        span_id=os.urandom(8).hex(),
        name="chat" if llm else "step",
        start_ns=start,
        end_ns=start + 250_000_000,
        parent_span_id=parent,
        status_code=StatusCode.ERROR if error else StatusCode.OK,
        error_class="Timeout" if error else None,
        operation="chat" if llm else None,
        request_model="gpt-4o-mini" if llm else None,
        input_tokens=100 if llm else None,
        output_tokens=20 if llm else None,
        cost_usd=0.001 if llm else None,
        user_id=user,
        session_id=session,
        feature="support",
        input=orjson.dumps([{"role": "user", "content": text}]).decode() if llm else None,
        output=orjson.dumps([{"role": "assistant", "content": f"re: {text}"}]).decode()
        if llm
        else None,
        attributes=attributes,
        events=[
            {
                "name": "exception",
                "time_ns": start + 1,
                "attributes": {"exception.message": f"failed on {text}", "attempt": 2},
            }
        ],
    )


def trace(
    *,
    days_ago: float,
    text: str,
    user: str | None = None,
    session: str | None = None,
    children: int = 2,
    child_gap_days: float = 0.0,
    child_user: str | None = None,
) -> list[Span]:
    """A root span (naming the user and session) and ``children`` LLM spans (naming
    ``child_user`` only), each ``child_gap_days`` later than the one before; every span
    carries ``text``."""
    trace_id = new_trace_id()
    root = span(trace_id, days_ago=days_ago, text=text, user=user, session=session, llm=False)
    out = [root]
    for n in range(children):
        out.append(
            span(
                trace_id,
                days_ago=days_ago - (n + 1) * child_gap_days,
                parent=root.span_id,
                text=f"{text} part {n}",
                user=child_user,
                error=n == 1,
            )
        )
    return out


def write(
    engine: sa.Engine, project_id: int, items: Iterable[Span], *, defer: bool = False
) -> None:
    """Store spans the way ingestion does (roll-ups upserted, or deferred as deltas)."""
    writer = SpanWriter(engine)
    prepared = writer.prepare([(project_id, s) for s in items])
    with writer.transaction() as conn:
        writer.write_prepared(conn, prepared, defer_rollups=defer)


def project(engine: sa.Engine, slug: str = "default") -> int:
    with engine.begin() as conn:
        return ensure_project(conn, slug)


@dataclass
class EvalRun:
    run_id: str
    item_ids: list[str] = field(default_factory=list)


def dataset_and_run(
    engine: sa.Engine,
    project_id: int,
    name: str,
    *,
    result_traces: dict[str, str] | None = None,
    finished_days_ago: float | None = None,
) -> EvalRun:
    """A dataset snapshotted from the project's model-call spans, and a finished eval run
    over it with one result and two scores per item (``result_traces`` maps an item id to
    the trace its result was recorded on)."""
    with engine.connect() as conn:
        taken = snapshot(conn, project_id, TraceSelection(limit=1000, expected_from_output=True))
    pushed = store.push_dataset(engine, project_id, name, taken.items, sources=taken.sources)
    run_id = store.create_run(
        engine,
        project_id,
        target_key="model:gpt-4o-mini",
        target={"kind": "model", "model": "gpt-4o-mini"},
        target_hash="t" * 64,
        dataset=pushed.info,
        scorers=[{"type": "contains"}],
        params={},
        repeats=1,
    )
    results = [
        store.RecordedResult(
            item_id=item.id,
            repeat=0,
            output=f"output for {item.vars}",
            cache_key=hashlib.sha256(f"{run_id}{item.id}".encode()).hexdigest(),
            scores=(Score("contains", 1.0, True, "ok"), Score("length", 0.5, False, "short")),
            trace_id=(result_traces or {}).get(item.id),
        )
        for item in taken.items
    ]
    store.record_results(engine, project_id, run_id, results)
    store.finish_run(engine, project_id, run_id, "completed", {"items": len(results)})
    if finished_days_ago is not None:
        with engine.begin() as conn:
            conn.execute(
                sa.update(eval_runs)
                .where(eval_runs.c.run_id == run_id)
                .values(finished_at=datetime.now(UTC) - timedelta(days=finished_days_ago))
            )
    return EvalRun(run_id, [item.id for item in taken.items])


def reject(engine: sa.Engine, project_id: int, refused: Span) -> None:
    with engine.begin() as conn:
        store_rejects(conn, [Rejected(project_id, refused, OverflowError("refused"))])


def digest(engine: sa.Engine) -> dict[str, str]:
    """A digest of every table's rows: equal digests, equal contents."""
    out = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            encoded = sorted(repr(tuple(row)) for row in rows)
            out[table.name] = hashlib.sha256("\n".join(encoded).encode()).hexdigest()
    return out


def text_columns(table: sa.Table) -> list[sa.Column[Any]]:
    return [c for c in table.columns if isinstance(c.type, sa.String)]


def find_text(engine: sa.Engine, needle: str) -> list[str]:
    """``table.column`` of every stored value holding ``needle``, in every table."""
    found = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for column in text_columns(table):
                hits = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(table)
                    .where(column.contains(needle, autoescape=True))
                ).scalar_one()
                if hits:
                    found.append(f"{table.name}.{column.name}")
    return found


def assert_traces_consistent(engine: sa.Engine, project_id: int) -> None:
    """Every trace row sums exactly its stored spans, and every span has its trace row."""
    s, t = spans.c, traces.c
    with engine.connect() as conn:
        sums = {
            row.trace_seq: row
            for row in conn.execute(
                sa.select(
                    s.trace_seq,
                    sa.func.count().label("n"),
                    sa.func.min(s.start_ns).label("start_ns"),
                    sa.func.max(s.end_ns).label("end_ns"),
                    sa.func.sum(
                        sa.case(
                            (sa.or_(s.status_code == 2, s.error_class.is_not(None)), 1), else_=0
                        )
                    ).label("errors"),
                    sa.func.coalesce(sa.func.sum(s.input_tokens), 0).label("input_tokens"),
                )
                .where(s.project_id == project_id)
                .group_by(s.trace_seq)
            )
        }
        rows = {
            row.seq: row
            for row in conn.execute(sa.select(traces).where(t.project_id == project_id))
        }
    assert set(sums) == set(rows), "a trace row without spans, or spans without their row"
    for seq, agg in sums.items():
        row = rows[seq]
        assert (row.span_count, row.start_ns, row.end_ns, row.error_count, row.input_tokens) == (
            agg.n,
            agg.start_ns,
            agg.end_ns,
            agg.errors,
            agg.input_tokens,
        ), f"trace {row.trace_id} disagrees with its spans"
