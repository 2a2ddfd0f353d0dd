"""Write transactions that survive concurrent writers on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

__all__ = ["is_retryable", "run_write"]

_T = TypeVar("_T")


def is_retryable(exc: sa.exc.DBAPIError) -> bool:
    """A lost race worth redoing: a unique key another writer inserted first, a serialisation
    failure or deadlock (PostgreSQL), a busy database (SQLite)."""
    if isinstance(exc, sa.exc.IntegrityError):
        return True  # a concurrent writer inserted the same key first: redo with fresh reads
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in {"40001", "40P01"} or "database is locked" in str(exc.orig)


def run_write(engine: sa.Engine, work: Callable[[sa.Connection], _T], *, attempts: int = 6) -> _T:
    """Run ``work`` in one write transaction and commit; retry it whole on a lost race."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # Take the write lock up front: a deferred transaction that reads and then
                    # writes can neither see nor wait for a concurrent writer's new version.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                result = work(conn)
                conn.commit()
                return result
        except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")
