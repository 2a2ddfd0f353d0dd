"""Small SQL pieces the retention modules share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["among", "chunks", "delete_keys", "ensure_statistics", "in_index_order"]

_T = TypeVar("_T")


def among(
    column: sa.ColumnElement[Any], values: Sequence[Any], dialect: str
) -> sa.ColumnElement[bool]:
    """``column IN values`` with the values bound as one parameter (an array on PostgreSQL, a
    JSON list on SQLite): a batch's thousand keys would otherwise be a thousand parameters."""
    if dialect == "postgresql":
        kind: sa.types.TypeEngine[Any] = (
            sa.BigInteger() if all(isinstance(v, int) for v in values) else sa.Text()
        )
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(kind)))
    each = sa.func.json_each(sa.bindparam(None, orjson.dumps(list(values)).decode()))
    return column.in_(sa.select(each.table_valued("value").c.value))


def chunks(values: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``values`` in consecutive slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def delete_keys(
    conn: sa.Connection,
    table: sa.Table,
    project_id: int,
    columns: Sequence[str],
    keys: Sequence[Sequence[Any]],
) -> int:
    """Delete the project's rows of ``table`` whose ``columns`` hold one of ``keys``; returns
    how many went.

    One statement run once per key (a prepared statement on SQLite, a pipeline on
    PostgreSQL): each finds its row through the primary key. SQLite plans a row-value
    ``IN`` list as a scan of the project's rows instead, which a big table cannot afford.
    """
    if not keys:
        return 0
    c = table.c
    statement = sa.delete(table).where(
        c.project_id == project_id, *(c[name] == sa.bindparam(f"key_{name}") for name in columns)
    )
    params = [
        {f"key_{name}": value for name, value in zip(columns, key, strict=True)} for key in keys
    ]
    return int(conn.execute(statement, params).rowcount)


_PLANNER = ("enable_bitmapscan", "enable_seqscan", "enable_sort")
# Tables whose rows a pass or an erasure finds by key in batches.
_WALKED = ("spans", "traces", "ingest_rejects", "eval_results", "eval_scores")


@contextmanager
def in_index_order(conn: sa.Connection) -> Iterator[None]:
    """Have PostgreSQL read the next query's rows by walking the index that gives its order.

    The oldest rows of a time range, a batch at a time: unless its statistics say how many
    rows the range holds, the planner reads the whole range and sorts it for every batch,
    which grows with the range and makes a pass quadratic. Walking the index stops after the
    batch. The switches are put back as they were afterwards; SQLite walks it anyway.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    before = {
        name: conn.exec_driver_sql(f"SELECT current_setting('{name}')").scalar_one()
        for name in _PLANNER
    }
    for name in _PLANNER:
        conn.exec_driver_sql(f"SET LOCAL {name} = off")
    try:
        yield
    finally:
        for name, value in before.items():
            conn.exec_driver_sql(f"SET LOCAL {name} = {value}")


def ensure_statistics(engine: sa.Engine) -> list[str]:
    """ANALYZE the tables retention walks that PostgreSQL has never gathered statistics for
    (a store just loaded, before autovacuum's first look); returns their names.

    Without statistics the planner takes a table for a few pages and finds a batch's rows by
    scanning the project's whole index range instead of by primary key: a pass over a million
    rows then takes hours instead of minutes. Autovacuum keeps them fresh afterwards.
    """
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        never = [
            str(name)
            for name in conn.execute(
                sa.text(
                    "SELECT relname FROM pg_stat_user_tables WHERE relid = ANY(CAST(:tables AS"
                    " regclass[])) AND last_analyze IS NULL AND last_autoanalyze IS NULL"
                ),
                {"tables": list(_WALKED)},
            ).scalars()
        ]
        for name in never:
            conn.exec_driver_sql(f"ANALYZE {name}")
        conn.commit()
    return never
