"""Multi-row statements: every row lands, through a few fixed statement widths."""

from __future__ import annotations

import sqlite3

import pytest

from bastion.store.bulk import BulkUpsert, MultiRowInsert


@pytest.mark.parametrize("count", [0, 1, 2, 899, 900, 901, 2_000, 5_437])
def test_any_number_of_rows_lands_through_a_bounded_set_of_statements(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c REAL)")
    statements: set[str] = set()
    cursor = conn.cursor()

    class Recording:
        description = None  # no RETURNING

        def execute(self, sql: str, parameters: list[object]) -> None:
            statements.add(sql)
            cursor.execute(sql, parameters)

    insert = MultiRowInsert(
        "INSERT INTO t (a, b, c) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", ["a", "b", "c"]
    )
    rows = [(i, f"row {i}", i / 2) for i in range(count)]
    insert.execute(Recording(), rows)
    assert conn.execute("SELECT COUNT(*), COALESCE(SUM(a), 0) FROM t").fetchone() == (
        count,
        sum(range(count)),
    )
    # Widths 900, 300, 100, 33, 11, 3, 1: a statement per width at most, whatever the count.
    assert len(statements) <= 7
    conn.close()


def test_a_statement_with_parameters_outside_values_is_refused() -> None:
    with pytest.raises(ValueError, match="single-row INSERT"):
        MultiRowInsert(
            "INSERT INTO t (a) VALUES (?) ON CONFLICT (a) DO UPDATE SET b = ?", ["a", "b"]
        )


def test_groups_sharing_keys_are_written_key_ordered_one_occurrence_per_statement() -> None:
    import sqlalchemy as sa
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    metadata = sa.MetaData()
    table = sa.Table(
        "c", metadata, sa.Column("k", sa.String, primary_key=True), sa.Column("n", sa.Integer)
    )
    insert = sqlite_dialect.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=["k"], set_={"n": table.c.n + insert.excluded.n}
    )
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    upsert = BulkUpsert(statement, table, engine.dialect, key=["k"])
    first = upsert.parameters([{"k": "b", "n": 1}, {"k": "a", "n": 1}, {"k": "c", "n": 1}])
    second = upsert.parameters([{"k": "c", "n": 10}, {"k": "a", "n": 10}])
    assert first == [("a", 1), ("b", 1), ("c", 1)]
    seen: list[str] = []
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        raw.set_trace_callback(seen.append)  # type: ignore[union-attr]
        upsert.execute(conn, [first, second])
        raw.set_trace_callback(None)  # type: ignore[union-attr]
        assert dict(conn.execute(sa.select(table.c.k, table.c.n)).all()) == {
            "a": 11,
            "b": 1,
            "c": 11,
        }
    # Every key once, in order, then the second occurrences: the same lock order everywhere.
    inserts = [sql for sql in seen if sql.startswith("INSERT")]
    assert [sql.split(" VALUES ")[1].split(" ON ")[0] for sql in inserts] == [
        "('a', 1), ('b', 1), ('c', 1)",
        "('a', 10)",  # two rows go as widths 1 + 1 (3 is the next width up)
        "('c', 10)",
    ]
    engine.dispose()


@pytest.mark.parametrize("count", [1, 901, 2_000])
def test_returning_rows_come_back_from_every_statement(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    insert = MultiRowInsert(
        "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
        " RETURNING a",
        ["a", "b"],
    )
    returned = insert.execute(conn.cursor(), [(i, "x") for i in range(count)])
    assert sorted(a for (a,) in returned) == list(range(count))
    conn.close()
