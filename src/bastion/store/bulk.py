"""Many rows per statement, straight through the database driver.

The ingest path writes tens of thousands of rows a second. SQLAlchemy's per-row parameter
processing would cost more than the database itself, and so would a statement per row: SQLite
gets multi-row ``VALUES`` (one parse per hundreds of rows, and the driver hands the GIL back
once per statement rather than once per row, which a writer thread must then win back from busy
request threads); PostgreSQL gets one array per column through ``unnest``.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

__all__ = ["BulkUpsert", "MultiRowInsert", "UnnestInsert"]

_ROWS_PER_STATEMENT = 900
_MAX_PARAMETERS = 30_000  # below SQLite's limit (32,766 since 3.32)
_NO_KEY = object()
_PARAM = re.compile(r"%\((\w+)\)s(?:::\w+)?")


class MultiRowInsert:
    """A SQLite ``INSERT ... VALUES (?, ...) ...``, widened to many rows per execution.

    Every parameter must be in the VALUES group; rows are tuples in :attr:`names` order.
    """

    def __init__(self, sql: str, names: Sequence[str]) -> None:
        head, found, rest = sql.partition(" VALUES (")
        group, _, tail = rest.partition(")")
        if not found or "?" in tail or group.replace(" ", "").split(",") != ["?"] * len(names):
            raise ValueError(f"not a single-row INSERT with all parameters in VALUES: {sql}")
        self.names = list(names)
        self._group = f"({group})"
        self._head, self._tail = head, tail
        top = max(1, min(_ROWS_PER_STATEMENT, _MAX_PARAMETERS // len(self.names)))
        # A few fixed widths, not one per remainder: every width is a statement the driver
        # prepares and caches per connection, and a wide one is a large program.
        self._widths = [top]
        while self._widths[-1] > 1:
            self._widths.append(max(1, self._widths[-1] // 3))
        self._by_width = {width: self._sql(width) for width in self._widths}

    def _sql(self, rows: int) -> str:
        values = ", ".join(itertools.repeat(self._group, rows))
        return f"{self._head} VALUES {values}{self._tail}"

    def execute(self, cursor: Any, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Insert ``rows``; returns the rows a ``RETURNING`` clause returned (else none)."""
        returned: list[tuple[Any, ...]] = []
        start = 0
        for width in self._widths:
            while len(rows) - start >= width:
                chunk = rows[start : start + width]
                cursor.execute(self._by_width[width], list(itertools.chain.from_iterable(chunk)))
                if cursor.description is not None:
                    returned += cursor.fetchall()
                start += width
        return returned


class UnnestInsert:
    """A psycopg ``INSERT ... VALUES (%(a)s::T, ...) ...`` as ``INSERT ... SELECT * FROM
    unnest(%s::T[], ...) ...``: one array per column, so any number of rows is one short,
    cacheable statement."""

    def __init__(self, sql: str, table: sa.Table, dialect: sa.Dialect) -> None:
        head, found, rest = sql.partition(" VALUES (")
        group, _, tail = rest.partition(") ON CONFLICT")
        params = [_PARAM.fullmatch(part.strip()) for part in group.split(",")]
        if not found or not tail or not all(params) or _PARAM.search(tail):
            raise ValueError(f"not a single-row INSERT with all parameters in VALUES: {sql}")
        self.names = [m.group(1) for m in params if m]
        types = [table.c[name].type.compile(dialect=dialect) for name in self.names]
        arrays = ", ".join(f"%s::{sql_type}[]" for sql_type in types)
        self._sql = f"{head} SELECT * FROM unnest({arrays}) ON CONFLICT{tail}"

    def execute(self, cursor: Any, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Insert ``rows``; returns the rows a ``RETURNING`` clause returned (else none)."""
        if not rows:
            return []
        cursor.execute(self._sql, [list(column) for column in zip(*rows, strict=True)])
        return cursor.fetchall() if cursor.description is not None else []


class BulkUpsert:
    """A Core ``INSERT ... ON CONFLICT`` compiled once for SQLite or PostgreSQL.

    Rows are written in the order of their conflict key, whatever groups they come in, so that
    concurrent transactions lock the rows they share in the same order and cannot deadlock.
    """

    def __init__(
        self,
        statement: Any,
        table: sa.Table,
        dialect: sa.Dialect,
        key: Sequence[str],
        columns: Sequence[str] | None = None,
    ) -> None:
        # ``columns``: the ones rows give (default: all); the others take their defaults.
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        self._sql: MultiRowInsert | UnnestInsert = (
            UnnestInsert(compiled.string, table, dialect)
            if dialect.name == "postgresql"
            else MultiRowInsert(compiled.string, list(compiled.positiontup or []))
        )
        self._key = operator.itemgetter(*(self._sql.names.index(column) for column in key))

    @property
    def names(self) -> list[str]:
        """The columns of a row, in the order :meth:`parameters` puts them."""
        return self._sql.names

    def parameters(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """``rows`` in the shape the driver takes, in key order (before the transaction)."""
        names = self._sql.names
        return sorted((tuple(r[k] for k in names) for r in rows), key=self._key)

    def execute(
        self, conn: sa.Connection, groups: list[list[tuple[Any, ...]]]
    ) -> list[tuple[Any, ...]]:
        """Write ``groups`` of rows, each in key order with no key twice (as ``parameters``
        makes them); a key in several groups is added to once per group. Returns what the
        statement's ``RETURNING`` clause returned, if it has one."""
        if len(groups) > 1:
            groups = self._by_occurrence(groups)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        returned: list[tuple[Any, ...]] = []
        try:
            for rows in groups:
                returned += self._sql.execute(cursor, rows)
        finally:
            cursor.close()
        return returned

    def _by_occurrence(self, groups: list[list[tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
        # The first statement holds every key once, in order, so it takes all the row locks in
        # key order; the later ones (second occurrences and so on) only touch rows it holds.
        # PostgreSQL also refuses one statement that updates a row twice.
        rows = sorted(itertools.chain.from_iterable(groups), key=self._key)
        out: list[list[tuple[Any, ...]]] = []
        previous: Any = _NO_KEY
        occurrence = 0
        for row in rows:
            key = self._key(row)
            occurrence = occurrence + 1 if key == previous else 0
            previous = key
            if occurrence == len(out):
                out.append([])
            out[occurrence].append(row)
        return out
