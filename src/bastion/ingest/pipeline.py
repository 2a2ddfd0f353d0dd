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

A write that fails is spooled only when the database is at fault (an outage, by the error's
class: :mod:`bastion.store.write_errors`). When the data is, the batch is split until the
spans the database refuses are found (:mod:`bastion.ingest.isolation`): the others are
committed and those go to the dead-letter store, so one bad span neither holds back the
spans of other projects nor is retried forever. Spool replay does the same.
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
from pathlib import Path

import sqlalchemy as sa

from bastion.ingest.isolation import UnpreparableSpans, write_isolating
from bastion.ingest.metrics import IngestMetrics
from bastion.ingest.spool import Spool, SpoolCorruption, SpoolStats
from bastion.store.dead_letters import Rejected, count_by_reason, store_rejects
from bastion.store.write_errors import is_data_error
from bastion.store.writer import PreparedBatch, SpanWriter
from bastion.tracing.model import Span

__all__ = ["Backpressure", "IngestHealth", "IngestMetrics", "IngestPipeline", "NotDurable"]

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


@dataclass(frozen=True, slots=True)
class IngestHealth:
    """Whether ingestion keeps up: ``reasons`` says what is wrong when it does not."""

    reasons: tuple[str, ...]
    spool: SpoolStats

    @property
    def ok(self) -> bool:
        return not self.reasons


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
    # Since when writes fail (time.time()) and with what, while database_ok is False.
    failing_since: float = 0.0
    last_error: str = ""
    # Roll-up deltas this writer committed and no fold has taken yet (see _maybe_fold).
    deltas_pending: bool = False
    next_fold_at: float = 0.0


def _pairs(items: list[_Item]) -> list[tuple[int, Span]]:
    return [(item.project_id, span) for item in items for span in item.spans]


def _unpreparable(exc: BaseException) -> UnpreparableSpans:
    error = UnpreparableSpans(f"rows could not be built: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


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
        spool_stale_after_s: float = 60.0,
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
        self.spool_stale_after_s = spool_stale_after_s
        self.price = price
        self._state = _State()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._spool_has_data = not spool.empty
        self._writer_out = threading.Event()  # cleared while the writer runs statements
        self._writer_out.set()
        self.metrics.watch_spool(spool)

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

    def health(self) -> IngestHealth:
        """What keeps ingestion from keeping up, if anything: writes failing while the spool
        holds spans (it is not draining), or the spool's oldest record older than
        ``spool_stale_after_s``."""
        reasons = []
        stats = self.spool.stats()
        state = self._state
        if stats.segments and not state.database_ok:
            failing_for = max(0.0, time.time() - state.failing_since)
            reasons.append(
                f"spool not draining: database writes failing for {failing_for:.0f} s"
                f" ({state.last_error})"
            )
        if stats.oldest_age_s > self.spool_stale_after_s:
            reasons.append(
                f"spool's oldest record is {stats.oldest_age_s:.0f} s old"
                f" (more than {self.spool_stale_after_s:g} s)"
            )
        return IngestHealth(tuple(reasons), stats)

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

    def prepare(self, project_id: int, spans: Sequence[Span]) -> PreparedBatch | None:
        """Price ``spans`` and build their rows (thread-safe; no database work); None when a
        span's rows cannot be built, which the writer thread then finds and sets aside."""
        try:
            return self._prepare([(project_id, span) for span in spans])
        except Exception:
            log.warning("could not prepare %d spans; isolating them", len(spans), exc_info=True)
            return None

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
        self.spool.count_spans()  # segments a former run left: their spans, for the gauges
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
        failure: BaseException | None = None
        try:
            prepared = self._prepare_items(items)
        except Exception as exc:  # noqa: BLE001 (a span's fault: isolated below, like a data error)
            prepared, failure = None, _unpreparable(exc)
        if self._state.database_ok or time.monotonic() >= self._state.next_replay_at:
            if prepared is not None:
                try:
                    written = self._write_batch(items, prepared)
                except Exception as exc:  # noqa: BLE001 (classified below: data error or outage)
                    failure = exc
                else:
                    self._committed(written)
                    self.metrics.duplicates.inc(sum(len(i.spans) for i in items) - written)
                    self._acknowledge(items, None)
                    return
            assert failure is not None
            if isinstance(failure, UnpreparableSpans) or is_data_error(failure):
                if self._isolate(_pairs(items), failure):
                    self._acknowledge(items, None)
                    return
            else:
                self._database_failed(failure)
        self._acknowledge(items, self._spool(_pairs(items)))

    def _prepare_items(self, items: list[_Item]) -> PreparedBatch:
        parts = [item.prepared for item in items if item.prepared is not None]
        raw = [item for item in items if item.prepared is None]
        if raw:
            parts.append(self._prepare([(i.project_id, span) for i in raw for span in i.spans]))
        return self.writer.combine(parts)

    def _write_batch(self, items: list[_Item], prepared: PreparedBatch) -> int:
        """Write ``prepared`` in one transaction; returns how many spans were new. Items that
        join it are appended to ``items`` (so a failure spools or isolates them too)."""
        batch = sum(len(item.spans) for item in items)
        with self._transaction() as conn:
            # Requests that arrived while this writer waited for its turn (SQLite's write lock
            # is shared by all workers) join the batch: one turn and one commit for all of
            # them, rather than another wait each.
            extra = self._take_prepared(self.batch_max_spans - batch)
            if extra:
                items.extend(extra)
                parts = [prepared, *(item.prepared for item in extra if item.prepared)]
                prepared = self.writer.combine(parts)
            return self.writer.write_prepared(conn, prepared, defer_rollups=True)

    def _committed(self, written: int) -> None:
        """A transaction writing ``written`` new spans (and their roll-up deltas) committed."""
        self._database_recovered()
        if written and not self._state.deltas_pending:
            self._state.deltas_pending = True
            self._state.next_fold_at = time.monotonic() + self.rollup_fold_interval_s
        self.metrics.written.inc(written)

    @staticmethod
    def _acknowledge(items: list[_Item], error: BaseException | None) -> None:
        for item in items:
            item.done(error)

    def _spool(self, pairs: list[tuple[int, Span]]) -> BaseException | None:
        """Append ``pairs`` to the spool; the error to acknowledge them with (None: durable)."""
        try:
            self.spool.append(pairs)
        except OSError as exc:
            log.error("spool append failed; %d spans not acknowledged: %s", len(pairs), exc)
            return NotDurable(f"database unavailable and spool failed: {exc}")
        self._spool_has_data = True
        self.metrics.spooled.inc(len(pairs))
        return None

    def _write_part(self, part: Sequence[tuple[int, Span]]) -> int:
        """Write ``part`` of a batch being isolated in its own transaction (no pricing: its
        spans were priced before the batch failed)."""
        try:
            prepared = self.writer.prepare(part)
        except Exception as exc:
            raise _unpreparable(exc) from exc
        with self._transaction() as conn:
            written = self.writer.write_prepared(conn, prepared, defer_rollups=True)
        self._committed(written)
        return written

    def _isolate(self, pairs: list[tuple[int, Span]], failure: BaseException | None) -> bool:
        """Commit the spans of ``pairs`` the database takes, dead-letter those it refuses;
        False when an outage interrupted that (the caller then spools the whole batch)."""
        try:
            written, rejected = write_isolating(pairs, self._write_part, failed_with=failure)
            self._dead_letter(rejected)
        except Exception as exc:  # noqa: BLE001 (an outage met on the way: spool the batch)
            self._database_failed(exc)
            return False
        self.metrics.duplicates.inc(len(pairs) - written - len(rejected))
        return True

    def _dead_letter(self, rejected: list[Rejected]) -> None:
        if not rejected:
            return
        with self._transaction() as conn:
            store_rejects(conn, rejected)
        for reason, count in count_by_reason(rejected).items():
            self.metrics.dead_lettered.labels(reason).inc(count)
        log.warning(
            "the database refused %d span(s); kept in the dead-letter store (first: project %d,"
            " span %s: %s)",
            len(rejected),
            rejected[0].project_id,
            rejected[0].span.span_id,
            rejected[0].error,
        )

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

    def _database_failed(self, exc: BaseException) -> None:
        if self._state.database_ok:
            log.warning("database write failed, spooling to disk until it recovers: %s", exc)
            self._state.failing_since = time.time()
        self._state.last_error = type(exc).__name__
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
                return
            try:
                replayed = self._replay(segment)
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
            log.info("replayed spool segment %s (%d new spans)", segment.name, replayed)
            with self._cond:
                if self._state.pending and not force:
                    return  # let live traffic in between segments

    def _replay(self, segment: Path) -> int:
        """Write a spooled segment: in one transaction, or, when the database refuses some of
        its spans for a data reason, batch by batch with those spans dead-lettered. Returns how
        many spans were new; raises on an outage (the segment stays)."""
        try:
            replayed = 0
            with self._transaction() as conn:
                for batch in self.spool.read_segment(segment):
                    try:
                        prepared = self.writer.prepare(batch)
                    except Exception as exc:
                        raise _unpreparable(exc) from exc
                    replayed += self.writer.write_prepared(conn, prepared)
            return replayed
        except Exception as exc:
            if not (isinstance(exc, UnpreparableSpans) or is_data_error(exc)):
                raise  # an outage, or a corrupt segment
        log.warning("spool segment %s holds spans the database refuses; isolating", segment.name)
        replayed = 0
        for batch in self.spool.read_segment(segment):
            written, rejected = write_isolating(batch, self._write_part)
            self._dead_letter(rejected)
            replayed += written
        return replayed
