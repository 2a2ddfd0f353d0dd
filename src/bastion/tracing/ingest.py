"""The ingest pipeline: a bounded queue in front of one batch-writing thread.

Producers (the OTLP receiver, the gateway) call :meth:`IngestPipeline.submit` and get an
awaitable that completes once their spans are durable: committed to the database or, when the
database is down or failing, fsync'd to the spool. The writer thread takes whatever is queued
(up to ``batch_max_spans``) per transaction, so batches grow by themselves under load: group
commit. Spans nobody waits for (the gateway's) may wait up to ``batch_linger_s`` for company,
because a transaction costs about the same for one span as for hundreds; spans whose producer
awaits the acknowledgement (an OTLP request) are written at once. When the queue is full,
``submit`` raises :class:`Backpressure` at once rather than let memory grow; receivers turn
that into 429/503 with ``Retry-After``.

A producer that already runs off the event loop (the OTLP receiver decodes in a thread) calls
:meth:`IngestPipeline.prepare` there and submits the result: pricing the spans and building
their rows then happens in parallel with the writer instead of inside it, and the writer thread
only runs statements. Such a thread first calls :meth:`IngestPipeline.yield_to_writer`, which
waits while the writer holds the database: the threads of a process share one GIL, and a
decoding thread beside the writer made each of its transactions take about twice as long, which
on SQLite is time the write lock all worker processes share stays held.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.store.writer import PreparedBatch, SpanWriter
from bastion.tracing.model import Span
from bastion.tracing.spool import Spool, SpoolCorruption

__all__ = ["Backpressure", "IngestMetrics", "IngestPipeline", "NotDurable"]

log = logging.getLogger("bastion.ingest")

_FOLD_LIMIT = 5_000  # deferred roll-up rows (one per batch and project) folded per transaction
# Longest a decoding thread waits for the writer: a database that stalls a transaction must not
# stall decoding with it.
_YIELD_MAX_S = 0.25


class Backpressure(Exception):
    """The queue is full; the caller should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotDurable(Exception):
    """Neither the database nor the spool accepted the spans; they were not acknowledged."""


class IngestMetrics:
    """Prometheus metrics of the pipeline, registered in the server's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "bastion_spans_received", "Spans accepted onto the queue", registry=registry
        )
        self.written = Counter(
            "bastion_spans_written", "Spans committed to the database", registry=registry
        )
        self.duplicates = Counter(
            "bastion_spans_duplicate",
            "Spans skipped because they were already stored",
            registry=registry,
        )
        self.spooled = Counter(
            "bastion_spans_spooled", "Spans written to the disk spool", registry=registry
        )
        self.replayed = Counter(
            "bastion_spans_replayed",
            "Spans moved from the spool into the database",
            registry=registry,
        )
        self.rejected = Counter(
            "bastion_spans_rejected_backpressure",
            "Spans refused because the queue was full",
            registry=registry,
        )
        self.failed_batches = Counter(
            "bastion_ingest_db_failures",
            "Batches the database refused (then spooled)",
            registry=registry,
        )
        self.queue_spans = Gauge(
            "bastion_ingest_queue_spans", "Spans waiting in memory", registry=registry
        )
        self.spool_bytes = Gauge(
            "bastion_ingest_spool_bytes", "Bytes waiting in the spool", registry=registry
        )
        self.rollup_deltas_folded = Counter(
            "bastion_rollup_deltas_folded",
            "Deferred roll-up rows (one per batch) folded into the hourly roll-ups",
            registry=registry,
        )
        self.database_up = Gauge(
            "bastion_ingest_database_up",
            "1 when the last write to the database succeeded",
            registry=registry,
        )
        self.database_up.set(1)


@dataclass(slots=True)
class _Item:
    project_id: int
    spans: Sequence[Span]
    done: Callable[[BaseException | None], None]
    awaited: bool = False
    prepared: PreparedBatch | None = None


@dataclass(slots=True)
class _State:
    pending: deque[_Item] = field(default_factory=deque)
    pending_spans: int = 0
    awaited_items: int = 0
    stopping: bool = False
    database_ok: bool = True
    next_replay_at: float = 0.0
    # Roll-up deltas this writer committed and no fold has taken yet (see _maybe_fold).
    deltas_pending: bool = False
    next_fold_at: float = 0.0


class IngestPipeline:
    """Bounded queue + batch writer thread + spool. Start it, submit to it, stop it."""

    def __init__(
        self,
        writer: SpanWriter,
        spool: Spool,
        *,
        metrics: IngestMetrics,
        queue_max_spans: int = 200_000,
        batch_max_spans: int = 5_000,
        batch_linger_s: float = 0.0,
        replay_interval_s: float = 1.0,
        rollup_fold_interval_s: float = 5.0,
        price: Callable[[int, Span], None] | None = None,
    ) -> None:
        self.writer = writer
        self.spool = spool
        self.metrics = metrics
        self.queue_max_spans = queue_max_spans
        self.batch_max_spans = batch_max_spans
        self.batch_linger_s = batch_linger_s
        self.replay_interval_s = replay_interval_s
        self.rollup_fold_interval_s = rollup_fold_interval_s
        self.price = price
        self._state = _State()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._spool_has_data = not spool.empty
        self._writer_out = threading.Event()  # cleared while the writer runs statements
        self._writer_out.set()
        self.metrics.spool_bytes.set(spool.pending_bytes())

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="bastion-span-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write out everything queued, then stop the thread (blocking)."""
        with self._cond:
            self._state.stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    # -- producers ---------------------------------------------------------------------------

    @property
    def queued_spans(self) -> int:
        return self._state.pending_spans

    @property
    def database_ok(self) -> bool:
        return self._state.database_ok

    def submit_nowait(
        self,
        project_id: int,
        spans: Sequence[Span],
        done: Callable[[BaseException | None], None],
        *,
        awaited: bool = False,
        prepared: PreparedBatch | None = None,
    ) -> None:
        """Queue ``spans``; ``done`` is called from the writer thread once they are durable.

        ``awaited`` says someone is waiting for ``done``: the batch is then not held back for
        the linger. ``prepared`` is :meth:`prepare`'s result for the same spans.
        """
        if not spans:
            done(None)
            return
        with self._cond:
            state = self._state
            if state.stopping:
                raise Backpressure("the server is shutting down", retry_after_s=5)
            if state.pending_spans + len(spans) > self.queue_max_spans and state.pending_spans:
                self.metrics.rejected.inc(len(spans))
                raise Backpressure(
                    f"ingest queue full ({state.pending_spans} spans waiting); retry later",
                    retry_after_s=1 if state.database_ok else 5,
                )
            was_empty = not state.pending
            state.pending.append(_Item(project_id, spans, done, awaited, prepared))
            state.pending_spans += len(spans)
            self.metrics.queue_spans.set(state.pending_spans)
            # The writer only needs waking to start a batch or to cut one short of its linger;
            # waking it on every submit would make it fight the event loop for the GIL.
            wake = was_empty or (awaited and not state.awaited_items)
            state.awaited_items += awaited
            if wake or state.pending_spans >= self.batch_max_spans:
                self._cond.notify_all()
        self.metrics.received.inc(len(spans))

    def prepare(self, project_id: int, spans: Sequence[Span]) -> PreparedBatch:
        """Price ``spans`` and build their rows (thread-safe; no database work)."""
        return self._prepare([(project_id, span) for span in spans])

    def yield_to_writer(self, timeout: float = _YIELD_MAX_S) -> bool:
        """Wait while the writer thread runs a transaction's statements, at most ``timeout``
        seconds; False when it still does.

        For threads about to do CPU work that can wait (decoding a request): they would take
        the GIL from the writer between its statements. Never call it on the event loop.
        """
        return self._writer_out.wait(timeout)

    def _prepare(self, pairs: list[tuple[int, Span]]) -> PreparedBatch:
        if self.price is not None:
            for project_id, span in pairs:
                self.price(project_id, span)
        return self.writer.prepare(pairs)

    async def submit(
        self, project_id: int, spans: Sequence[Span], prepared: PreparedBatch | None = None
    ) -> None:
        """Queue ``spans`` and wait until they are durable (raises Backpressure / NotDurable).

        ``prepared``, when given, is :meth:`prepare`'s result for ``spans``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def done(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(resolve, error)

        self.submit_nowait(project_id, spans, done, awaited=True, prepared=prepared)
        await asyncio.shield(future)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until the queue is empty (for tests and the CLI); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state.pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    # -- the writer thread -------------------------------------------------------------------

    _busy = False

    def _take(self) -> list[_Item] | None:
        with self._cond:
            state = self._state
            while not state.pending:
                if state.stopping:
                    return None
                timeout = self.replay_interval_s if self._spool_has_data else None
                if state.deltas_pending:
                    fold_in = max(0.0, state.next_fold_at - time.monotonic())
                    timeout = fold_in if timeout is None else min(timeout, fold_in)
                self._cond.wait(timeout)
                if not state.pending and (self._spool_has_data or state.deltas_pending):
                    return []
            if self.batch_linger_s > 0:
                deadline = time.monotonic() + self.batch_linger_s
                while (
                    state.pending_spans < self.batch_max_spans
                    and not state.awaited_items
                    and not state.stopping
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            # The first item goes whatever its size: one larger than a batch still gets written.
            items = self._pop(max(self.batch_max_spans, len(state.pending[0].spans)))
            self._busy = True
            return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                break
            try:
                if items:
                    self._write(items)
                self._maybe_replay()
                self._maybe_fold()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        self._maybe_replay(force=True)
        self._maybe_fold(force=True)

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """The writer's transaction, with decoding threads yielding to it while its statements
        run (not during the commit, which mostly waits for the disk with the GIL released)."""
        with self.writer.transaction() as conn:
            self._writer_out.clear()
            try:
                yield conn
            finally:
                self._writer_out.set()

    def _write(self, items: list[_Item]) -> None:
        parts = [item.prepared for item in items if item.prepared is not None]
        raw = [item for item in items if item.prepared is None]
        if raw:
            parts.append(self._prepare([(i.project_id, span) for i in raw for span in i.spans]))
        prepared = self.writer.combine(parts)
        batch = sum(len(item.spans) for item in items)
        error: BaseException | None = None
        if self._state.database_ok or time.monotonic() >= self._state.next_replay_at:
            try:
                with self._transaction() as conn:
                    # Requests that arrived while this writer waited for its turn (SQLite's
                    # write lock is shared by all workers) join the batch: one turn and one
                    # commit for all of them, rather than another wait each.
                    extra = self._take_prepared(self.batch_max_spans - batch)
                    if extra:
                        items = items + extra
                        parts = [prepared, *(item.prepared for item in extra if item.prepared)]
                        prepared = self.writer.combine(parts)
                        batch += sum(len(item.spans) for item in extra)
                    written = self.writer.write_prepared(conn, prepared, defer_rollups=True)
            except Exception as exc:  # noqa: BLE001 (any database failure: the spool takes over)
                self._database_failed(exc)
            else:
                self._database_recovered()
                if written and not self._state.deltas_pending:
                    self._state.deltas_pending = True
                    self._state.next_fold_at = time.monotonic() + self.rollup_fold_interval_s
                self.metrics.written.inc(written)
                self.metrics.duplicates.inc(batch - written)
                for item in items:
                    item.done(None)
                return
        try:
            self.spool.append(prepared.pairs())
        except OSError as exc:
            log.error("spool append failed; %d spans not acknowledged: %s", batch, exc)
            error = NotDurable(f"database unavailable and spool failed: {exc}")
        else:
            self._spool_has_data = True
            self.metrics.spooled.inc(len(prepared.keys))
            self.metrics.spool_bytes.set(self.spool.pending_bytes())
        for item in items:
            item.done(error)

    def _take_prepared(self, room: int) -> list[_Item]:
        """Queued items already prepared, oldest first, while they fit in ``room`` spans."""
        with self._cond:
            return self._pop(room, prepared_only=True)

    def _pop(self, room: int, *, prepared_only: bool = False) -> list[_Item]:
        """Dequeue items, oldest first, while they fit in ``room`` spans (lock held)."""
        state = self._state
        items: list[_Item] = []
        while state.pending and len(state.pending[0].spans) <= room:
            if prepared_only and state.pending[0].prepared is None:
                break
            item = state.pending.popleft()
            items.append(item)
            room -= len(item.spans)
            state.pending_spans -= len(item.spans)
            state.awaited_items -= item.awaited
        if items:
            self.metrics.queue_spans.set(state.pending_spans)
        return items

    def _database_failed(self, exc: Exception) -> None:
        if self._state.database_ok:
            log.warning("database write failed, spooling to disk until it recovers: %s", exc)
        self._state.database_ok = False
        self._state.next_replay_at = time.monotonic() + self.replay_interval_s
        self.metrics.failed_batches.inc()
        self.metrics.database_up.set(0)

    def _database_recovered(self) -> None:
        if not self._state.database_ok:
            log.warning("database writes recovered")
        self._state.database_ok = True
        self.metrics.database_up.set(1)

    def _maybe_fold(self, force: bool = False) -> None:
        """Fold committed roll-up deltas into the roll-ups, at most once per fold interval.

        The deltas are in the database already (the spans' own transactions wrote them), so a
        fold that fails loses nothing: the next one takes them.
        """
        state = self._state
        if not state.deltas_pending or (not force and time.monotonic() < state.next_fold_at):
            return
        try:
            with self._transaction() as conn:
                folded = self.writer.fold_rollups(conn, limit=_FOLD_LIMIT)
        except Exception as exc:  # noqa: BLE001 (the deltas wait in the database for the next try)
            log.warning("roll-up fold failed, retrying later: %s", exc)
            folded = None
        self.metrics.rollup_deltas_folded.inc(folded or 0)
        # Done once a fold took what was left; while another writer folds (None), or more
        # remain than one fold takes, this one stays responsible for its deltas.
        if folded is not None and folded < _FOLD_LIMIT:
            state.deltas_pending = False
        else:
            state.next_fold_at = time.monotonic() + self.rollup_fold_interval_s

    def _maybe_replay(self, force: bool = False) -> None:
        """Move spooled segments into the database while it accepts them (oldest first)."""
        if not self._spool_has_data:
            return
        if (
            not force
            and not self._state.database_ok
            and time.monotonic() < self._state.next_replay_at
        ):
            return
        while True:
            segment = self.spool.oldest()
            if segment is None:
                self._spool_has_data = False
                self.metrics.spool_bytes.set(0)
                return
            try:
                replayed = 0
                with self._transaction() as conn:
                    for batch in self.spool.read_segment(segment):
                        replayed += self.writer.write_in(conn, batch)
            except SpoolCorruption as exc:
                kept = self.spool.quarantine(segment)
                log.error("%s; segment kept at %s for inspection", exc, kept)
                continue
            except Exception as exc:  # noqa: BLE001 (the database is still unavailable)
                self._database_failed(exc)
                return
            self._database_recovered()
            self.spool.remove(segment)
            self.metrics.replayed.inc(replayed)
            self.metrics.spool_bytes.set(self.spool.pending_bytes())
            log.info("replayed spool segment %s (%d new spans)", segment.name, replayed)
            with self._cond:
                if self._state.pending and not force:
                    return  # let live traffic in between segments
