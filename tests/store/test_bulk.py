"""Multi-row statements: every row lands, through a few fixed statement widths."""

from __future__ import annotations

import sqlite3

import pytest

from bastion.store.bulk import MultiRowInsert


@pytest.mark.parametrize("count", [0, 1, 2, 899, 900, 901, 2_000, 5_437])
def test_any_number_of_rows_lands_through_a_bounded_set_of_statements(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c REAL)")
    statements: set[str] = set()
    cursor = conn.cursor()

    class Recording:
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
