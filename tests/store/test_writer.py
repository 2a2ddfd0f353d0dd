"""The span writer: batches of any size, retries and concurrent writers keep every counter exact."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode


def _spans(n: int, *, per_trace: int = 5) -> list[Span]:
    now = time.time_ns()
    spans: list[Span] = []
    trace_id = ""
    for i in range(n):
        if i % per_trace == 0:
            trace_id = os.urandom(16).hex()
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=os.urandom(8).hex(),
                name="chat",
                start_ns=now + i,
                end_ns=now + i + 2_000_000,
                operation="chat",
                request_model="gpt-4o-mini",
                status_code=StatusCode.ERROR if i % 10 == 0 else StatusCode.UNSET,
                input_tokens=10,
                output_tokens=3,
                ttft_ms=1.5 if i % 2 else None,
                user_id=f"user-{i % 37}",
                input="x" * 200,
            )
        )
    return spans


def _totals(engine: sa.Engine) -> tuple[int, int, int, int, int]:
    with engine.connect() as conn:
        spans = conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar_one()
        traced = conn.execute(sa.text("SELECT SUM(span_count) FROM traces")).scalar_one()
        rolled, errors, inputs = conn.execute(
            sa.text(
                "SELECT span_count, error_count, input_tokens FROM span_rollups"
                " WHERE dimension = 'total'"
            )
        ).one()
    return int(spans), int(traced), int(rolled), int(errors), int(inputs)


def _histogram_total(engine: sa.Engine, column: str) -> int:
    from bastion.store.histogram import decode

    with engine.connect() as conn:
        text = conn.execute(
            sa.text(f"SELECT {column} FROM span_rollups WHERE dimension = 'total'")
        ).scalar_one()
    return sum(decode(text).values())


def test_a_batch_larger_than_one_statement_with_retried_spans_counts_each_span_once(
    engine: sa.Engine,
) -> None:
    spans = _spans(2_500)
    writer = SpanWriter(engine)
    assert writer.write([(1, s) for s in spans[:1_000]]) == 1_000
    # An exporter retries everything: only the 1,500 new spans may add to the counters.
    assert writer.write([(1, s) for s in spans]) == 1_500
    assert writer.write([(1, s) for s in spans]) == 0
    assert _totals(engine) == (2_500, 2_500, 2_500, 250, 25_000)
    assert _histogram_total(engine, "latency_hist") == 2_500
    assert _histogram_total(engine, "ttft_hist") == 1_250


def test_writers_of_one_sqlite_file_take_turns_without_losing_a_span(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    setup = create_engine(url)
    migrate.upgrade(setup)
    setup.dispose()
    # Two engines stand for two worker processes: each has its own connections and lock file
    # descriptor, and a short busy timeout shows they wait on the lock file, not on SQLite.
    engines = [create_engine(url, sqlite_busy_timeout_ms=50) for _ in range(2)]
    errors: list[BaseException] = []

    def run(engine: sa.Engine) -> None:
        writer = SpanWriter(engine)
        try:
            for _ in range(20):
                writer.write([(1, s) for s in _spans(300)])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for engine in engines:
        engine.dispose()
    assert errors == []
    check = create_engine(url)
    try:
        assert _totals(check)[:3] == (12_000, 12_000, 12_000)
    finally:
        check.dispose()
    assert (tmp_path / "shared.db.write-lock").exists()


def test_text_needing_escapes_round_trips_exactly(engine: sa.Engine) -> None:
    # Tabs, newlines, carriage returns and backslashes are COPY's own syntax on PostgreSQL.
    tricky = "tab\there\nnew line\r\nback\\slash \\N not null ünï ✓ \U0001f600"
    span = _spans(1)[0]
    span.name = tricky
    span.input = tricky * 3
    span.user_id = "\\"
    span.cost_usd = 1e-7
    span.attributes = {"note": tricky}
    assert SpanWriter(engine).write([(1, span)]) == 1
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT name, input, user_id, cost_usd, attributes, status_message FROM spans")
        ).one()
    assert row.name == tricky
    assert row.input == tricky * 3
    assert row.user_id == "\\"
    assert row.cost_usd == pytest.approx(1e-7)
    assert orjson.loads(row.attributes)["note"] == tricky
    assert row.status_message is None


def test_numbers_no_column_holds_are_stored_as_unknown_not_wrapped(engine: sa.Engine) -> None:
    # Receivers range-check what they accept; any other producer's out-of-range number must
    # neither fail the batch on every retry nor wrap around in PostgreSQL's binary COPY.
    (span,) = _spans(1)
    span.input_tokens = 2**64
    span.output_tokens = 10**12  # the most one call may report
    span.cached_tokens = -5
    span.prompt_version = 2**40
    span.prompt_name = "greet"
    span.kind = 40_000
    assert SpanWriter(engine).write([(1, span)]) == 1
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT input_tokens, output_tokens, cached_tokens, prompt_version, kind FROM spans"
            )
        ).one()
    assert tuple(row) == (None, 10**12, None, None, 0)


def _trace_seqs(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {row[0]: row[1] for row in conn.execute(sa.text("SELECT trace_id, seq FROM traces"))}


def test_spans_are_stored_under_their_traces_number_however_they_arrive(
    engine: sa.Engine,
) -> None:
    from bastion.store.queries import get_trace

    first, second, third = _spans(15)[::5], _spans(5), _spans(5)
    late_trace = first[0].trace_id
    late = Span(trace_id=late_trace, span_id="f" * 16, name="late", start_ns=1, end_ns=2)
    writer = SpanWriter(engine)
    assert writer.write([(1, s) for s in first]) == 3
    before = _trace_seqs(engine)
    # A late span of a stored trace, a retried one, and new traces in one batch.
    assert writer.write([(1, s) for s in [late, first[1], *second]]) == 6
    after = _trace_seqs(engine)
    assert writer.write([(1, s) for s in third]) == 5
    latest = _trace_seqs(engine)

    assert {t: after[t] for t in before} == before  # a stored trace keeps its number
    assert min(after[second[0].trace_id], after[first[0].trace_id]) >= min(before.values())
    assert after[second[0].trace_id] > max(before.values())
    assert latest[third[0].trace_id] > max(after.values())
    with engine.connect() as conn:
        keyed = conn.execute(sa.text("SELECT trace_id, trace_seq FROM spans")).all()
        tree = get_trace(conn, 1, late_trace)
        counts = {
            row[0]: row[1]
            for row in conn.execute(sa.text("SELECT trace_id, span_count FROM traces"))
        }
    assert all(seq == latest[trace] for trace, seq in keyed)
    assert tree is not None
    assert sorted(node.span_id for node in tree.roots) == sorted([first[0].span_id, "f" * 16])
    assert counts[late_trace] == 2
    assert sum(counts.values()) == len(keyed) == 14


def test_a_span_in_two_combined_parts_is_written_and_counted_once(engine: sa.Engine) -> None:
    spans = _spans(40)
    writer = SpanWriter(engine)
    parts = [
        writer.prepare([(1, s) for s in spans[:30]]),
        writer.prepare([(1, s) for s in spans[20:]]),
    ]
    with writer.transaction() as conn:
        assert writer.write_prepared(conn, SpanWriter.combine(parts)) == 40
    assert _totals(engine) == (40, 40, 40, 4, 400)
    assert len(set(_trace_seqs(engine).values())) == 8
