"""Retention and erasure while spans keep arriving, on SQLite and PostgreSQL: late spans of
the very traces being deleted, written by the real span writer from another thread, leave
every trace row in agreement with its spans."""

from __future__ import annotations

import random
import threading

import sqlalchemy as sa

from bastion.retention import ErasureRequest, apply, erase
from bastion.settings import Settings
from bastion.store.schema import spans
from tests.retention.support import assert_traces_consistent, find_text, project, span, trace, write


def test_a_pass_keeps_summaries_consistent_while_late_spans_arrive(engine: sa.Engine) -> None:
    pid = project(engine)
    old = [trace(days_ago=40, text=f"old {n}", user="u") for n in range(120)]
    write(engine, pid, [s for t in old for s in t])
    errors: list[BaseException] = []
    done = threading.Event()
    rng = random.Random(7)

    def late_spans() -> None:
        try:
            while not done.is_set():
                batch = []
                for _ in range(20):
                    target = rng.choice(old)[0]
                    days = rng.choice([40, 20, 1])  # expired, kept, recent
                    batch.append(span(target.trace_id, days_ago=days, parent=target.span_id))
                write(engine, pid, batch)
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    writer = threading.Thread(target=late_spans)
    writer.start()
    settings = Settings(retention={"spans_days": 30, "batch_size": 25})
    try:
        first = apply(engine, settings)
    finally:
        done.set()
        writer.join(60)
    assert errors == []
    assert first.total("spans") > 0
    apply(engine, settings)  # what arrived expired after the first pass went past it
    assert_traces_consistent(engine, pid)
    with engine.connect() as conn:
        oldest = conn.execute(sa.select(sa.func.min(spans.c.start_ns))).scalar()
    assert oldest is not None
    assert all(s.start_ns < oldest for t in old for s in t)  # every 40-day span is gone


def test_an_erasure_while_spans_arrive(engine: sa.Engine) -> None:
    pid = project(engine)
    mine = [
        trace(days_ago=1, text=f"HENRY-{n}", user="henry", child_user="henry") for n in range(30)
    ]
    write(engine, pid, [s for t in mine for s in t])
    errors: list[BaseException] = []
    done = threading.Event()

    def others() -> None:
        try:
            while not done.is_set():
                write(engine, pid, trace(days_ago=0, text="someone", user="ivy", children=4))
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    writer = threading.Thread(target=others)
    writer.start()
    try:
        summary = erase(engine, ErasureRequest.of(pid, user="henry"), actor="key:1")
    finally:
        done.set()
        writer.join(60)
    assert errors == []
    assert (summary.traces, summary.spans) == (30, 90)
    assert find_text(engine, "HENRY-") == []
    assert_traces_consistent(engine, pid)
