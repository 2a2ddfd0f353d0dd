"""Migrations go up and down cleanly on both databases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.store import migrate
from bastion.store.aggregates import ROLLUP_DIMENSIONS
from bastion.store.engine import create_engine
from bastion.store.schema import metadata


def test_upgrade_creates_every_table_and_downgrade_removes_them(db_url: str) -> None:
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    tables = set(sa.inspect(engine).get_table_names())
    assert set(metadata.tables) <= tables

    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    assert not set(metadata.tables) & set(sa.inspect(engine).get_table_names())

    migrate.upgrade(engine)  # and up again, from nothing
    assert set(metadata.tables) <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_migrated_schema_matches_the_declared_metadata(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


MERGE_CASES = [
    ('{"3": 2}', '{"3": 1, "7": 4}', {3: 3, 7: 4}),
    ('{"3": 2}', "{}", {3: 2}),
    ("{}", '{"9": 1}', {9: 1}),
    (None, '{"9": 1}', {9: 1}),
    ('{"1": 5}', None, {1: 5}),
    (None, None, {}),
    ('{"250": 9007199254740993}', '{"250": 1}', {250: 9007199254740994}),
]


def _merge_all(engine: sa.Engine) -> list[dict[int, int]]:
    from bastion.store.histogram import decode

    with engine.connect() as conn:
        return [
            decode(
                conn.execute(
                    sa.text("SELECT bastion_hist_merge(:a, :b)"), {"a": a, "b": b}
                ).scalar_one()
            )
            for a, b, _ in MERGE_CASES
        ]


def test_histogram_merge_function_exists_in_sql(engine: sa.Engine) -> None:
    assert _merge_all(engine) == [want for _, _, want in MERGE_CASES]


def test_histogram_merge_function_agrees_across_revisions(db_url: str) -> None:
    # 0006 rewrote the PostgreSQL function for speed: before and after must add the same way.
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    expected = [want for _, _, want in MERGE_CASES]
    assert _merge_all(engine) == expected
    migrate.downgrade(engine, "0005")
    assert _merge_all(engine) == expected
    migrate.upgrade(engine)
    assert _merge_all(engine) == expected
    engine.dispose()


def test_downgrade_below_deferred_roll_ups_folds_what_is_left(db_url: str) -> None:
    import time

    from bastion.store.queries import metrics_summary
    from bastion.store.writer import SpanWriter
    from bastion.tracing.model import Span

    engine = create_engine(db_url)
    migrate.upgrade(engine)
    hour_ns = 3_600 * 1_000_000_000
    start = (time.time_ns() // hour_ns - 2) * hour_ns
    spans = [
        Span(
            trace_id=f"{i:032x}",
            span_id=f"{i:016x}",
            name="chat",
            start_ns=start + i,
            end_ns=start + i + (i + 1) * 1_000_000,
            operation="chat",
            request_model="gpt-4o-mini",
            input_tokens=i,
            ttft_ms=float(i) if i % 2 else None,
            user_id=f"user-{i % 3}",
        )
        for i in range(30)
    ]
    writer = SpanWriter(engine)
    with writer.transaction() as conn:
        writer.write_prepared(conn, writer.prepare([(1, s) for s in spans]), defer_rollups=True)

    def summary(by: str) -> object:
        with engine.connect() as conn:
            return metrics_summary(
                conn, 1, start_ns=start, end_ns=start + hour_ns, group_by=[by]
            ).model_dump()

    before = {by: summary(by) for by in ("user", "model", "hour")}
    migrate.downgrade(engine, "0006")
    assert "span_rollup_deltas" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        total = conn.execute(
            sa.text("SELECT span_count FROM span_rollups WHERE dimension = 'total'")
        ).scalar_one()
    assert total == 30
    migrate.upgrade(engine)
    assert {by: summary(by) for by in ("user", "model", "hour")} == before
    engine.dispose()


def _trace_seqs(conn: sa.Connection) -> dict[tuple[int, str], int]:
    rows = conn.execute(sa.text("SELECT project_id, trace_id, seq FROM traces"))
    return {(project, trace): seq for project, trace, seq in rows}


def _span_count(tree: Any) -> int:
    def count(nodes: Any) -> int:
        return sum(1 + count(node.children) for node in nodes)

    return 0 if tree is None else count(tree.roots)


def test_spans_move_to_their_traces_sequence_and_back(db_url: str) -> None:
    from bastion.store.queries import get_trace
    from bastion.store.writer import SpanWriter
    from bastion.tracing.model import Span

    engine = create_engine(db_url)
    migrate.upgrade(engine, "0007")
    span_sql = sa.text(
        "INSERT INTO spans (project_id, trace_id, span_id, name, kind, start_ns, end_ns,"
        " status_code, latency_ms, attributes, resource, events, ingested_ns)"
        " VALUES (:p, :t, :s, 'step', 0, :start, :start + 5, 0, 1.0, '{}', '{}', '[]', 1)"
    )
    trace_sql = sa.text(
        "INSERT INTO traces (project_id, trace_id, start_ns, end_ns, span_count, error_count,"
        " llm_count, input_tokens, output_tokens) VALUES (:p, :t, 100, 205, 2, 0, 0, 0, 0)"
    )
    # Two projects share a trace id; the third trace has spans but lost its trace row.
    stored = {(1, "a" * 32): 2, (2, "a" * 32): 2, (1, "b" * 32): 2, (1, "c" * 32): 3}
    with engine.begin() as conn:
        for (project, trace), count in stored.items():
            if trace != "c" * 32:
                conn.execute(trace_sql, {"p": project, "t": trace})
            for i in range(count):
                conn.execute(
                    span_sql, {"p": project, "t": trace, "s": f"{i:016x}", "start": 100 * (i + 1)}
                )

    migrate.upgrade(engine)
    with engine.connect() as conn:
        seqs = _trace_seqs(conn)
        keyed = conn.execute(sa.text("SELECT project_id, trace_id, trace_seq FROM spans")).all()
        orphan = conn.execute(
            sa.text("SELECT span_count, start_ns, end_ns FROM traces WHERE trace_id = :t"),
            {"t": "c" * 32},
        ).one()
        trees = {key: get_trace(conn, key[0], key[1]) for key in stored}
    assert set(seqs) == set(stored)
    assert len(set(seqs.values())) == len(stored)
    assert all(seq == seqs[(project, trace)] for project, trace, seq in keyed)
    assert tuple(orphan) == (3, 100, 305)
    assert {key: _span_count(tree) for key, tree in trees.items()} == stored

    # Traces seen from now on number on from the largest.
    writer = SpanWriter(engine)
    late = Span(trace_id="b" * 32, span_id="f" * 16, name="late", start_ns=400, end_ns=450)
    new = Span(trace_id="d" * 32, span_id="e" * 16, name="new", start_ns=500, end_ns=550)
    assert writer.write([(1, late), (1, new)]) == 2
    with engine.connect() as conn:
        after = _trace_seqs(conn)
        tree = get_trace(conn, 1, "b" * 32)
    assert after[(1, "d" * 32)] > max(seqs.values())
    assert after[(1, "b" * 32)] == seqs[(1, "b" * 32)]
    assert _span_count(tree) == 3

    migrate.downgrade(engine, "0007")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("spans")}
    assert "trace_seq" not in columns
    assert "seq" not in {c["name"] for c in sa.inspect(engine).get_columns("traces")}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar_one() == 11
    # The span key is the trace id again.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(span_sql, {"p": 1, "t": "c" * 32, "s": f"{0:016x}", "start": 1})
    engine.dispose()


def test_day_roll_ups_are_backfilled_as_ingest_writes_them(db_url: str) -> None:
    import random

    from bastion.store.writer import SpanWriter
    from bastion.tracing.model import Span

    engine = create_engine(db_url)
    migrate.upgrade(engine)
    rng = random.Random(3)
    hour_ns = 3_600 * 1_000_000_000
    start = 1_767_225_600 * 1_000_000_000 - 7 * hour_ns  # three calendar days
    spans = [
        Span(
            trace_id=f"{i:032x}",
            span_id=f"{i:016x}",
            name="chat",
            start_ns=start + rng.randrange(0, 50 * hour_ns),
            end_ns=start + 50 * hour_ns + rng.randrange(1, 10**10),
            operation="chat",
            request_model=rng.choice(["a", "b"]),
            input_tokens=rng.randrange(1, 100),
            cost_usd=rng.choice([None, 0.25]),
            ttft_ms=rng.choice([None, 12.5, 400.0]),
            user_id=rng.choice(["u1", "u2", "u3"]),
        )
        for i in range(400)
    ]
    writer = SpanWriter(engine)
    for i in range(0, len(spans), 100):
        writer.write([(1, s) for s in spans[i : i + 100]])

    def day_rows() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT project_id, dimension, hour, value, span_count, error_count,"
                    " input_tokens, output_tokens, cached_tokens, cost_usd, cost_unknown_count,"
                    " latency_hist, ttft_hist FROM span_rollups WHERE dimension LIKE :days"
                ),
                {"days": "%:day"},
            ).all()
        decode = orjson.loads
        return sorted((*row[:-2], decode(row[-2]), decode(row[-1])) for row in rows)

    written = day_rows()
    assert {row[1] for row in written} == {f"{d}:day" for d in ROLLUP_DIMENSIONS}
    assert len({row[2] for row in written}) == 3
    migrate.downgrade(engine, "0008")
    assert day_rows() == []
    migrate.upgrade(engine)
    assert day_rows() == written
    engine.dispose()


def test_span_text_is_compressed_with_lz4_on_postgresql_and_back(db_url: str) -> None:
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    columns = ("input", "output", "attributes", "resource", "events")
    text = "How do I reset my password? " * 200  # compressible, past the TOAST threshold

    def write(n: int) -> None:
        # By hand: the running writer's columns are the head revision's, not 0009's.
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO spans (project_id, trace_id, trace_seq, span_id, name, kind,"
                    " start_ns, end_ns, status_code, latency_ms, input, attributes, resource,"
                    " events, ingested_ns) VALUES (1, :t, :n, :s, 'chat', 1, 1, 2, 0, 0.0,"
                    " :text, '{}', '{}', '[]', 1)"
                ),
                {"t": f"{n:032x}", "n": n, "s": f"{n:016x}", "text": text},
            )

    def methods() -> tuple[dict[str, str], list[str | None]]:
        with engine.connect() as conn:
            declared = conn.execute(
                sa.text(
                    "SELECT attname, attcompression FROM pg_attribute"
                    " WHERE attrelid = 'spans'::regclass AND attname = ANY(:columns)"
                ),
                {"columns": list(columns)},
            ).all()
            stored = conn.execute(
                sa.text("SELECT pg_column_compression(input) FROM spans ORDER BY span_id")
            ).scalars()
            return {name: str(method) for name, method in declared}, list(stored)

    def inputs() -> list[str]:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT input FROM spans ORDER BY span_id")).scalars())

    write(1)
    if engine.dialect.name == "postgresql":
        assert methods() == (dict.fromkeys(columns, "l"), ["lz4"])
    migrate.downgrade(engine, "0009")
    write(2)
    if engine.dialect.name == "postgresql":
        assert methods() == (dict.fromkeys(columns, ""), ["lz4", "pglz"])
    migrate.upgrade(engine)
    write(3)
    if engine.dialect.name == "postgresql":
        assert methods()[1] == ["lz4", "pglz", "lz4"]
    assert inputs() == [text, text, text]  # whichever way each was compressed
    engine.dispose()
