"""Deferred roll-ups: batches record roll-up deltas, a fold upserts each key once, and a summary
reads the same numbers before, during and after the fold, on both databases."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa

from bastion.store.queries import MetricsSummary, metrics_summary
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode

_HOUR_NS = 3_600 * 1_000_000_000


def _batch(n: int, *, start_ns: int, users: int = 7) -> list[tuple[int, Span]]:
    spans = []
    for i in range(n):
        spans.append(
            Span(
                trace_id=os.urandom(16).hex(),
                span_id=os.urandom(8).hex(),
                name="chat",
                start_ns=start_ns + i,
                end_ns=start_ns + i + (1 + i % 50) * 1_000_000,
                operation="chat",
                request_model="gpt-4o-mini" if i % 3 else "claude-haiku",
                status_code=StatusCode.ERROR if i % 9 == 0 else StatusCode.UNSET,
                input_tokens=10 + i,
                output_tokens=3,
                cached_tokens=i % 2,
                cost_usd=None if i % 11 == 0 else 0.001,
                ttft_ms=float(i % 13) if i % 2 else None,
                user_id=f"user-{i % users}",
                feature="search",
            )
        )
    return [(1, span) for span in spans]


def _write(writer: SpanWriter, batch: list[tuple[int, Span]], *, defer: bool) -> int:
    prepared = writer.prepare(batch)
    with writer.transaction() as conn:
        return writer.write_prepared(conn, prepared, defer_rollups=defer)


def _summary(engine: sa.Engine, by: str, project_id: int = 1) -> MetricsSummary:
    # Whole hours only: the numbers must come from roll-ups (and deltas), not raw spans.
    now = time.time_ns()
    start = (now // _HOUR_NS - 3) * _HOUR_NS
    with engine.connect() as conn:
        return metrics_summary(
            conn, project_id, start_ns=start, end_ns=start + 3 * _HOUR_NS, group_by=[by]
        )


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


@pytest.fixture
def hour_ago() -> int:
    return (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 5_000_000_000


def test_deferred_batches_sum_like_upserted_ones_before_and_after_the_fold(
    engine: sa.Engine, hour_ago: int
) -> None:
    writer = SpanWriter(engine)
    for i in range(4):
        batch = _batch(120, start_ns=hour_ago + i * 1000)
        _write(writer, batch, defer=True)
        # The same calls in project 2, upserted batch by batch: the reference.
        _write(
            writer, [(2, replace(s, span_id=os.urandom(8).hex())) for _, s in batch], defer=False
        )
    assert _count(engine, "span_rollup_deltas") == 4

    before = {by: _summary(engine, by) for by in ("model", "user", "feature", "day", "hour")}
    assert before["model"].total.count == 480
    assert before["model"].source == "rollups"
    for by, summary in before.items():
        assert summary.groups == _summary(engine, by, project_id=2).groups
        assert summary.total == _summary(engine, by, project_id=2).total
    reference_rows = _count(engine, "span_rollups")
    with writer.transaction() as conn:
        assert writer.fold_rollups(conn) == 4
    assert _count(engine, "span_rollup_deltas") == 0
    # One row per key however many batches added to it: 6 dimensions, 2 models, 7 users; an
    # hour's row and its day's row each.
    assert _count(engine, "span_rollups") == 2 * reference_rows == 2 * 2 * (1 + 2 + 1 + 1 + 7 + 1)
    for by, summary in before.items():
        assert _summary(engine, by) == summary


def test_a_fold_adds_to_roll_ups_that_exist_and_deltas_written_meanwhile_wait(
    engine: sa.Engine, hour_ago: int
) -> None:
    writer = SpanWriter(engine)
    _write(writer, _batch(50, start_ns=hour_ago), defer=False)
    _write(writer, _batch(50, start_ns=hour_ago + 10_000), defer=True)
    with writer.transaction() as conn:
        assert writer.fold_rollups(conn) == 1
    _write(writer, _batch(50, start_ns=hour_ago + 20_000), defer=True)
    summary = _summary(engine, "user")
    assert summary.total.count == 150
    assert summary.total.input_tokens == 3 * sum(10 + i for i in range(50))
    assert sum(g.count for g in summary.groups) == 150


def test_a_failed_fold_leaves_every_delta_for_the_next(engine: sa.Engine, hour_ago: int) -> None:
    writer = SpanWriter(engine)
    _write(writer, _batch(60, start_ns=hour_ago), defer=True)
    before = _summary(engine, "model")

    def fold_then_fail() -> None:
        with writer.transaction() as conn:
            writer.fold_rollups(conn)
            raise RuntimeError("the database went away mid-fold")

    with pytest.raises(RuntimeError):
        fold_then_fail()
    assert _count(engine, "span_rollup_deltas") == 1
    assert _summary(engine, "model") == before
    with writer.transaction() as conn:
        assert writer.fold_rollups(conn, limit=10) == 1
    assert _summary(engine, "model") == before


def test_a_fold_takes_at_most_its_limit_oldest_first(engine: sa.Engine, hour_ago: int) -> None:
    writer = SpanWriter(engine)
    for i in range(5):
        _write(writer, _batch(10, start_ns=hour_ago + i * 100), defer=True)
    with writer.transaction() as conn:
        assert writer.fold_rollups(conn, limit=2) == 2
    assert _count(engine, "span_rollup_deltas") == 3
    with writer.transaction() as conn:
        assert writer.fold_rollups(conn, limit=10) == 3
    assert _summary(engine, "model").total.count == 50


def test_only_one_postgresql_writer_folds_at_a_time(engine: sa.Engine, hour_ago: int) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take turns through the write lock instead")
    writer = SpanWriter(engine)
    _write(writer, _batch(30, start_ns=hour_ago), defer=True)
    with writer.transaction() as first:
        assert writer.fold_rollups(first) == 1
        _write(writer, _batch(30, start_ns=hour_ago + 1000), defer=True)
        with engine.begin() as second:
            assert writer.fold_rollups(second) is None  # the first still folds
    with writer.transaction() as conn:
        assert writer.fold_rollups(conn) == 1
    assert _summary(engine, "model").total.count == 60


def test_summaries_count_a_project_s_own_deltas_only(engine: sa.Engine, hour_ago: int) -> None:
    writer = SpanWriter(engine)
    other = [(2, span) for _, span in _batch(40, start_ns=hour_ago)]
    _write(writer, other, defer=True)
    _write(writer, _batch(25, start_ns=hour_ago), defer=True)
    assert _summary(engine, "model").total.count == 25


def test_a_batch_without_llm_calls_leaves_no_delta(engine: sa.Engine, hour_ago: int) -> None:
    writer = SpanWriter(engine)
    batch = [
        (1, replace(span, operation="retrieval", request_model=None))
        for _, span in _batch(10, start_ns=hour_ago)
    ]
    assert _write(writer, batch, defer=True) == 10
    assert _count(engine, "span_rollup_deltas") == 0
    assert _count(engine, "spans") == 10
