"""Audit records of automatic decisions made where nothing may wait for the database.

The gateway's request path opens and closes circuit breakers and crosses budget thresholds;
it must not do a database round trip or any blocking I/O for that. It hands the event to
:meth:`SystemAuditWriter.submit` (a lock and a list append), and a background thread appends
queued events to the chain, a batch per transaction, retrying with backoff while the
database does not answer.

Durability, unlike a change made through the API: the record is **not** in the transaction of
the decision (there is none; the decision is in memory) but written **at least once after
it**, within moments while the database answers. Events wait in memory meanwhile, at most
``audit.system_queue_max`` of them: beyond that new ones are dropped, counted in
``bastion_audit_system_events_dropped`` and logged. Events still queued when the process is
killed are lost; a clean shutdown waits a few seconds for them. A retry after a commit whose
acknowledgement was lost records an event twice: each carries its ``event_id`` in ``details``
so duplicates can be recognised.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections import deque
from dataclasses import replace

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.audit.chain import AuditChain
from bastion.audit.events import AuditEvent
from bastion.audit.log import AuditError, record
from bastion.store.transactions import run_write

__all__ = ["SystemAuditWriter"]

log = logging.getLogger("bastion.audit")


class SystemAuditWriter:
    """A queue of automatic decisions' events and the thread that appends them."""

    def __init__(
        self,
        engine: sa.Engine,
        chain: AuditChain,
        *,
        max_pending: int = 10_000,
        batch: int = 200,
        retry_max_s: float = 30.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.chain = chain
        self.max_pending = max_pending
        self.batch = batch
        self.retry_max_s = retry_max_s
        self._queue: deque[AuditEvent] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False
        self._dropping = False
        self._thread: threading.Thread | None = None
        self._dropped = Counter(
            "bastion_audit_system_events_dropped",
            "Audit events of automatic decisions dropped because the queue was full",
            registry=registry,
        )
        self._failures = Counter(
            "bastion_audit_system_write_failures",
            "Failed attempts to append queued audit events (each is retried)",
            registry=registry,
        )
        pending = Gauge(
            "bastion_audit_system_events_pending",
            "Audit events of automatic decisions waiting to be appended",
            registry=registry,
        )
        pending.set_function(lambda: len(self._queue))

    @property
    def pending(self) -> int:
        """Events not yet appended."""
        return len(self._queue)

    def submit(self, event: AuditEvent) -> bool:
        """Queue ``event`` without waiting; False when the queue is full (the event is dropped,
        counted and logged). Raises ValueError for a malformed event, as :func:`record` would."""
        event = replace(event, details={**(event.details or {}), "event_id": uuid.uuid4().hex})
        event.check()
        with self._cond:
            if len(self._queue) >= self.max_pending or self._closing:
                self._dropped.inc()
                if not self._dropping:  # once per overflow, not once per event
                    log.error(
                        "audit events of automatic decisions are dropped (first: %s of %s "
                        "%s): %d wait for the database",
                        event.action,
                        event.object_type,
                        event.object_id,
                        len(self._queue),
                    )
                self._dropping = True
                return False
            self._dropping = False
            self._queue.append(event)
            self._cond.notify_all()
        return True

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="bastion-audit-writer", daemon=True)
        self._thread.start()

    def _next_batch(self) -> list[AuditEvent] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._abandoned or not self._queue:
                return None
            return list(itertools.islice(self._queue, self.batch))

    def _write(self, batch: list[AuditEvent]) -> None:
        def work(conn: sa.Connection) -> None:
            for event in batch:
                record(conn, event, chain=self.chain)

        run_write(self.engine, work)

    def _run(self) -> None:
        delay = 0.0
        while (batch := self._next_batch()) is not None:
            try:
                self._write(batch)
            except (sa.exc.SQLAlchemyError, OSError, AuditError) as exc:
                self._failures.inc()
                if delay == 0.0:
                    log.warning("audit events wait for the database (retrying): %s", exc)
                delay = min(self.retry_max_s, max(0.05, delay * 2))
                with self._cond:
                    self._cond.wait_for(lambda: self._abandoned, timeout=delay)
                continue
            delay = 0.0
            with self._cond:
                # Only this thread removes events, so the batch is still the queue's front.
                for _ in batch:
                    self._queue.popleft()
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is appended; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> int:
        """Stop taking events, append the queued ones for up to ``timeout_s``, stop the thread;
        returns how many could not be appended (logged)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            self._abandoned = True
            left = len(self._queue)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if left:
            log.error("%d audit events of automatic decisions were not appended", left)
        return left
