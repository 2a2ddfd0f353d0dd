"""Migrations go up and down cleanly on both databases."""

from __future__ import annotations

import sqlalchemy as sa

from bastion.store import migrate
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
