"""Short write transactions that take turns with ingestion, paced by a duty cycle.

Retention deletes and rewrites rows in batches of bounded size, each batch its own
transaction, so a pass never holds the database for long: on SQLite the batch takes its turn
on the write lock the span writers of every worker process share (the writer's lock file, so
a waiting writer wakes the moment the batch commits), on PostgreSQL it holds its row locks
for one batch only. Between batches the pass pauses so that it spends at most ``duty_cycle``
of its time holding the database (from its turn on the lock to its commit) or reading pages
outside a transaction; ingestion has the rest. Waiting for its turn does not count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa

from bastion.store.transactions import is_retryable
from bastion.store.writer import SpanWriter

__all__ = ["Stopped", "Turns"]

_T = TypeVar("_T")
_ATTEMPTS = 6


class Stopped(Exception):
    """The pass was asked to stop (the server is shutting down) between two batches."""


class Turns:
    """Runs work in short write transactions, one after another, paced.

    ``secure_delete`` (SQLite) has the transactions overwrite what they delete with zeros, so
    that no erased byte stays in the database file's free space (erasure uses it; plain
    retention does not pay for it). ``stop`` ends the run at the next batch (:class:`Stopped`).
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        duty_cycle: float = 1.0,
        stop: threading.Event | None = None,
        secure_delete: bool = False,
        writer: SpanWriter | None = None,
    ) -> None:
        if not 0 < duty_cycle <= 1:
            raise ValueError(f"duty_cycle must be in (0, 1], got {duty_cycle!r}")
        self.engine = engine
        self.writer = writer if writer is not None else SpanWriter(engine)
        self.duty_cycle = duty_cycle
        self.stop = stop if stop is not None else threading.Event()
        self.secure_delete = secure_delete and engine.dialect.name == "sqlite"
        self.transactions = 0
        self.busy_s = 0.0
        self._unpaced_s = 0.0  # reading time since the last pause, paced with the next one
        self._held_at = 0.0  # when the running transaction got the database

    def check(self) -> None:
        """Raise :class:`Stopped` when the run was asked to stop."""
        if self.stop.is_set():
            raise Stopped

    def run(self, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` in one write transaction, redone whole on a lost race, then the
        pause its duration calls for: the time it held the database (from its turn on the
        write lock to its commit), not the time it waited for its turn."""
        self.check()
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._transaction() as conn:
                    result = work(conn)
            except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
                if attempt == _ATTEMPTS or not is_retryable(exc):
                    raise
                time.sleep(0.01 * attempt)
                continue
            elapsed = time.perf_counter() - self._held_at + self._unpaced_s
            self._unpaced_s = 0.0
            self.transactions += 1
            self.busy_s += elapsed
            if self.duty_cycle < 1:
                # Event.wait: a shutdown ends the pause at once.
                self.stop.wait(elapsed * (1 - self.duty_cycle) / self.duty_cycle)
            return result
        raise AssertionError("unreachable")

    def read(self, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` on a read connection, outside any write transaction (SQLite readers
        do not wait for the writer); its time counts towards the next pause."""
        self.check()
        started = time.perf_counter()
        with self.engine.connect() as conn:
            result = work(conn)
        self._unpaced_s += time.perf_counter() - started
        return result

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self.writer.transaction() as conn:
            self._held_at = time.perf_counter()
            if conn.dialect.name != "sqlite":
                yield conn
                return
            if self.secure_delete:
                conn.exec_driver_sql("PRAGMA secure_delete = ON")
            try:
                # The write lock up front: the batch reads what it then deletes.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                self._held_at = time.perf_counter()
                yield conn
            finally:
                if self.secure_delete:
                    # Back to the default before the connection returns to the pool.
                    conn.exec_driver_sql("PRAGMA secure_delete = OFF")
