"""Batch persistence of spans: one transaction writes spans, their traces and hourly roll-ups.

Writes are idempotent: a span already stored (an exporter retrying, a spool segment replayed
after a crash) is skipped, and only spans actually inserted feed the trace and roll-up counters.

A transaction upserts the batch's traces first, learning each one's ``seq`` (the key spans are
stored under), then inserts the spans. Nearly every batch is all new spans; when one is not,
the transaction goes back to before the traces and takes the careful way: number the traces
without counting, insert what is new, then count only that.

Every row of a batch is built before its transaction begins (:meth:`SpanWriter.prepare`), so a
transaction only runs statements. On SQLite the writers of all worker processes also take turns
through a lock file next to the database: a writer waiting on it wakes the moment the other
commits, where SQLite's own busy handler would sleep in growing steps of up to 100 ms.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bastion.store.aggregates import ROLLUP_COUNTERS, RollupTotals, trace_rows
from bastion.store.bulk import BulkUpsert, MultiRowInsert
from bastion.store.call_links import count_calls_once
from bastion.store.schema import span_rollup_deltas, span_rollups, spans, traces
from bastion.store.storable import make_span_storable, storable_json, storable_text
from bastion.tracing.model import Span

__all__ = ["PreparedBatch", "SpanWriter", "span_to_row"]

_ZERO: sa.ColumnElement[float] = sa.literal_column("0.0")
_EMPTY_HIST: sa.ColumnElement[str] = sa.literal_column("'{}'")
_SPAN_COLUMNS = tuple(c.name for c in spans.columns)
_SPAN_COLUMN_LIST = ", ".join(_SPAN_COLUMNS)
_TRACE_KEY = ("project_id", "trace_id")
_COUNTERS_ZERO = {
    "span_count": 0,
    "error_count": 0,
    "llm_count": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cost_usd": None,
}
_ROLLUP_KEY = ("project_id", "dimension", "hour", "value")
_FOLD_LOCK = 0x62617374696F6E  # the advisory lock one roll-up fold at a time holds


def span_to_row(
    project_id: int, span: Span, ingested_ns: int, resource_json: str | None = None
) -> list[Any]:
    """The ``spans`` row for ``span`` (made storable by :func:`make_span_storable` already), in
    column order (attributes kept as JSON text), its ``trace_seq`` None until the writer knows it.

    A list, not a dict: this runs once per span on the ingest path. ``resource_json`` is
    ``span.resource`` as JSON when the caller has it already (spans of one request share it).
    """
    return [
        project_id,
        span.trace_id,
        None,
        span.span_id,
        span.parent_span_id,
        span.name,
        int(span.kind),
        span.start_ns,
        span.end_ns,
        int(span.status_code),
        span.status_message,
        span.service_name,
        span.operation,
        span.provider,
        span.request_model,
        span.response_model,
        span.input_tokens,
        span.output_tokens,
        span.cached_tokens,
        span.cache_write_tokens,
        span.cost_usd,
        span.ttft_ms,
        span.latency_ms,
        span.error_class,
        span.user_id,
        span.session_id,
        span.feature,
        span.tenant,
        span.prompt_name,
        span.prompt_version,
        span.release_id,
        span.input,
        span.output,
        storable_json(span.attributes),
        storable_json(span.resource) if resource_json is None else resource_json,
        storable_json(span.events) if span.events else "[]",
        ingested_ns,
        None if span.request_id is None else storable_text(span.request_id, 128),
        None,  # duplicate_of: set once the call's gateway span is known (store.call_links)
    ]


_ROW_COLUMNS = (
    "project_id", "trace_id", "trace_seq", "span_id", "parent_span_id", "name", "kind",
    "start_ns", "end_ns", "status_code", "status_message", "service_name", "operation",
    "provider", "request_model", "response_model", "input_tokens", "output_tokens",
    "cached_tokens", "cache_write_tokens", "cost_usd", "ttft_ms", "latency_ms", "error_class",
    "user_id", "session_id", "feature", "tenant", "prompt_name", "prompt_version", "release_id",
    "input", "output", "attributes", "resource", "events", "ingested_ns", "request_id",
    "duplicate_of",
)  # fmt: skip
_TRACE_SEQ = _ROW_COLUMNS.index("trace_seq")
if _ROW_COLUMNS != _SPAN_COLUMNS:  # a schema change must update span_to_row too
    raise RuntimeError(f"span_to_row is out of date with the spans table: {_SPAN_COLUMNS}")


def _binary_type(column_type: sa.types.TypeEngine[Any]) -> str:
    """The PostgreSQL type name a ``spans`` column takes in a binary COPY."""
    if isinstance(column_type, sa.SmallInteger):
        return "int2"
    if isinstance(column_type, sa.BigInteger):
        return "int8"
    if isinstance(column_type, sa.Integer):
        return "int4"
    if isinstance(column_type, sa.Float):
        return "float8"
    if isinstance(column_type, sa.String):  # Text and String(n) alike
        return "text"
    raise TypeError(f"no binary COPY type for {column_type!r}")


@dataclass(slots=True)
class PreparedBatch:
    """A batch with every row built: what :meth:`SpanWriter.write_prepared` runs.

    Batches prepared apart (by the threads that decoded them) are written together by
    :meth:`SpanWriter.combine`-ing them; each part keeps its own ingest marker.
    """

    keys: list[tuple[int, str, str]]
    spans: list[Span]
    span_rows: list[list[Any]]
    markers: list[int]
    # Trace upsert rows in groups: within a group no key repeats, across groups (parts) it may.
    trace_params: list[list[tuple[Any, ...]]]
    # Roll-ups stay counters until the write: parts merge, and each key is upserted once.
    rollups: RollupTotals

    def pairs(self) -> list[tuple[int, Span]]:
        """The ``(project_id, span)`` pairs of the batch (what the spool keeps)."""
        return [(key[0], span) for key, span in zip(self.keys, self.spans, strict=True)]


class _SqliteWriteLock:
    """Takes turns with the span writers of other processes on the same SQLite file."""

    def __init__(self, database: str | None) -> None:
        self._path = Path(f"{database}.write-lock") if database and database != ":memory:" else None
        self._local = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._path is None:
            yield
            return
        with self._local:
            # Opened per transaction (microseconds against milliseconds of writing) so no
            # descriptor outlives the writer; closing it releases the lock.
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)


class SpanWriter:
    """Writes batches of ``(project_id, span)`` pairs; one instance per engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._insert = sqlite.insert if self._dialect == "sqlite" else postgresql.insert
        self._least = sa.func.min if self._dialect == "sqlite" else sa.func.least
        self._greatest = sa.func.max if self._dialect == "sqlite" else sa.func.greatest
        self._last_marker = 0
        self._marker_lock = threading.Lock()
        self._lock = _SqliteWriteLock(engine.url.database if self._dialect == "sqlite" else None)
        self._span_sql = MultiRowInsert(
            f"INSERT INTO spans ({_SPAN_COLUMN_LIST})"
            f" VALUES ({', '.join('?' * len(_SPAN_COLUMNS))}) ON CONFLICT DO NOTHING",
            _SPAN_COLUMNS,
        )
        # COPY in binary: PostgreSQL skips parsing text and the client escaping it (~4 µs a
        # span of both together). A binary integer that does not fit its column wraps around
        # silently, so prepare() keeps every number in range first.
        self._copy_types = [_binary_type(c.type) for c in spans.columns]
        self._trace_stmt = self._build_trace_upsert()
        self._seq_index = self._trace_stmt.names.index("seq") if self._dialect == "sqlite" else -1
        self._rollup_stmt = self._build_rollup_upsert()
        self._replace_rollups = self._build_rollup_replace()

    def _build_trace_upsert(self) -> BulkUpsert:
        ins = self._insert(traces)
        ex = ins.excluded
        t = traces.c
        cost = sa.case(
            (sa.and_(t.cost_usd.is_(None), ex.cost_usd.is_(None)), sa.null()),
            else_=sa.func.coalesce(t.cost_usd, _ZERO) + sa.func.coalesce(ex.cost_usd, _ZERO),
        )
        stmt = ins.on_conflict_do_update(
            index_elements=list(_TRACE_KEY),
            set_={
                "start_ns": self._least(t.start_ns, ex.start_ns),
                "end_ns": self._greatest(t.end_ns, ex.end_ns),
                "root_span_id": sa.func.coalesce(ex.root_span_id, t.root_span_id),
                "name": sa.case(
                    (ex.root_span_id.is_not(None), ex.name), else_=sa.func.coalesce(t.name, ex.name)
                ),
                "span_count": t.span_count + ex.span_count,
                "error_count": t.error_count + ex.error_count,
                "llm_count": t.llm_count + ex.llm_count,
                "input_tokens": t.input_tokens + ex.input_tokens,
                "output_tokens": t.output_tokens + ex.output_tokens,
                "cost_usd": cost,
                "user_id": sa.func.coalesce(t.user_id, ex.user_id),
                "session_id": sa.func.coalesce(t.session_id, ex.session_id),
                "feature": sa.func.coalesce(t.feature, ex.feature),
                "tenant": sa.func.coalesce(t.tenant, ex.tenant),
                "service_name": sa.func.coalesce(t.service_name, ex.service_name),
            },
        ).returning(t.project_id, t.trace_id, t.seq)
        # PostgreSQL numbers new traces from the column's identity; on SQLite the writer does.
        columns = [c.name for c in traces.c if c.name != "seq" or self._dialect == "sqlite"]
        return BulkUpsert(stmt, traces, self.engine.dialect, key=_TRACE_KEY, columns=columns)

    def _build_rollup_upsert(self) -> BulkUpsert:
        ins = self._insert(span_rollups)
        ex = ins.excluded
        r = span_rollups.c
        set_: dict[str, Any] = {name: r[name] + ex[name] for name in ROLLUP_COUNTERS}
        set_["latency_hist"] = self._hist_merge(r.latency_hist, ex.latency_hist)
        set_["ttft_hist"] = self._hist_merge(r.ttft_hist, ex.ttft_hist)
        stmt = ins.on_conflict_do_update(index_elements=list(_ROLLUP_KEY), set_=set_)
        return BulkUpsert(stmt, span_rollups, self.engine.dialect, key=_ROLLUP_KEY)

    def _build_rollup_replace(self) -> BulkUpsert:
        ins = self._insert(span_rollups)
        stmt = ins.on_conflict_do_update(
            index_elements=list(_ROLLUP_KEY),
            set_={
                c.name: ins.excluded[c.name] for c in span_rollups.c if c.name not in _ROLLUP_KEY
            },
        )
        return BulkUpsert(stmt, span_rollups, self.engine.dialect, key=_ROLLUP_KEY)

    @staticmethod
    def _hist_merge(stored: Any, added: Any) -> Any:
        # Most spans carry no TTFT: an empty histogram adds nothing, so skip the function call.
        return sa.case(
            (added == _EMPTY_HIST, stored), else_=sa.func.bastion_hist_merge(stored, added)
        )

    # -- writing -----------------------------------------------------------------------------

    def prepare(self, batch: Sequence[tuple[int, Span]]) -> PreparedBatch:
        """Build every row of ``batch`` (no database work; duplicates within it dropped)."""
        unique: dict[tuple[int, str, str], Span] = {}
        for project_id, span in batch:
            unique.setdefault((project_id, span.trace_id, span.span_id), span)
        for span in unique.values():
            make_span_storable(span)
        with self._marker_lock:
            # A marker no earlier batch used: rows carrying it after the insert are this batch's.
            marker = max(time.time_ns(), self._last_marker + 1)
            self._last_marker = marker
        keys = list(unique)
        pairs = [(key[0], span) for key, span in unique.items()]
        # The spans of one request share their resource: serialise each resource once.
        resources: dict[int, str] = {}
        rows = []
        for project_id, span in pairs:
            resource = resources.get(id(span.resource))
            if resource is None:
                resource = resources[id(span.resource)] = storable_json(span.resource)
            rows.append(span_to_row(project_id, span, marker, resource))
        return PreparedBatch(
            keys=keys,
            spans=list(unique.values()),
            span_rows=rows,
            markers=[marker],
            trace_params=[self._trace_stmt.parameters(trace_rows(pairs))],
            rollups=RollupTotals.of(pairs),
        )

    @staticmethod
    def combine(parts: Sequence[PreparedBatch]) -> PreparedBatch:
        """One batch of several prepared ones (a span in two of them is written once)."""
        if len(parts) == 1:
            return parts[0]
        combined = PreparedBatch([], [], [], [], [], RollupTotals())
        for part in parts:
            combined.keys += part.keys
            combined.spans += part.spans
            combined.span_rows += part.span_rows
            combined.markers += part.markers
            combined.trace_params += part.trace_params
            combined.rollups.merge(part.rollups)
        return combined

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction, taken in turn with the other writers of this database."""
        with self._lock.held(), self.engine.begin() as conn:
            yield conn

    def write(self, batch: Sequence[tuple[int, Span]]) -> int:
        """Persist ``batch`` in one transaction; returns how many spans were new."""
        if not batch:
            return 0
        prepared = self.prepare(batch)
        with self.transaction() as conn:
            return self.write_prepared(conn, prepared)

    def write_in(self, conn: sa.Connection, batch: Sequence[tuple[int, Span]]) -> int:
        """Like :meth:`write`, inside the caller's transaction."""
        return self.write_prepared(conn, self.prepare(batch))

    def write_prepared(
        self, conn: sa.Connection, prepared: PreparedBatch, *, defer_rollups: bool = False
    ) -> int:
        """Run a prepared batch inside the caller's transaction; returns how many were new.

        With ``defer_rollups`` the batch's roll-up counters go into ``span_rollup_deltas`` as
        one row per project instead of being upserted into ``span_rollups``; whoever defers
        must call :meth:`fold_rollups` now and then (the ingest pipeline does, every
        ``ingest.rollup_fold_interval_ms``). Summaries count deltas as they count roll-ups, so
        the choice never shows.
        """
        if not prepared.keys:
            return 0
        driver = conn.connection.driver_connection
        if self._dialect == "sqlite" and not driver.in_transaction:  # type: ignore[union-attr]
            # Savepoints need a transaction around them (releasing one that began it would
            # commit), and the write lock up front: the numbering below reads before it writes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        cursor = driver.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("SAVEPOINT bastion_batch")
            self._number_spans(prepared, self._upsert_traces(conn, prepared.trace_params))
            if self._insert_new_spans(cursor, prepared):
                cursor.execute("RELEASE SAVEPOINT bastion_batch")
                inserted = len(prepared.keys)
                rollups = prepared.rollups
            else:
                cursor.execute("ROLLBACK TO SAVEPOINT bastion_batch")
                cursor.execute("RELEASE SAVEPOINT bastion_batch")
                new = self._write_new_spans(conn, cursor, prepared)
                inserted = len(new)
                rollups = RollupTotals.of(new)
        finally:
            cursor.close()
        # A client's span of a call the gateway traced too is counted out (store.call_links).
        rollups = count_calls_once(conn, self._keyed(prepared), rollups)
        if defer_rollups:
            documents = rollups.dumps_by_project()  # empty when no span was an LLM call
            if documents:
                conn.execute(
                    span_rollup_deltas.insert(),
                    [
                        {"project_id": project_id, "totals": document.decode()}
                        for project_id, document in documents.items()
                    ],
                )
        else:
            self._upsert_rollups(conn, rollups.with_days())
        return inserted

    def _upsert_traces(
        self, conn: sa.Connection, groups: list[list[tuple[Any, ...]]]
    ) -> dict[tuple[int, str], int]:
        """Upsert trace rows; returns every trace's seq (a new one's just assigned)."""
        if self._dialect == "sqlite":
            # Only one writer at a time holds the write lock, so numbering on from the largest
            # seq is safe; a trace stored already keeps its own and its candidate goes unused.
            seq = conn.exec_driver_sql("SELECT COALESCE(MAX(seq), 0) FROM traces").scalar_one()
            at = self._seq_index
            numbered = []
            for rows in groups:
                out = []
                for row in rows:
                    seq += 1
                    out.append((*row[:at], seq, *row[at + 1 :]))
                numbered.append(out)
            groups = numbered
        return {
            (project, trace): seq for project, trace, seq in self._trace_stmt.execute(conn, groups)
        }

    @staticmethod
    def _keyed(prepared: PreparedBatch) -> Iterator[tuple[int, str, int, Span]]:
        rows = prepared.span_rows
        return ((r[0], r[1], r[_TRACE_SEQ], s) for r, s in zip(rows, prepared.spans, strict=True))

    @staticmethod
    def _number_spans(prepared: PreparedBatch, seqs: dict[tuple[int, str], int]) -> None:
        for row in prepared.span_rows:
            row[_TRACE_SEQ] = seqs[(row[0], row[1])]

    def _write_new_spans(
        self, conn: sa.Connection, cursor: Any, prepared: PreparedBatch
    ) -> list[tuple[int, Span]]:
        """The careful way, for a batch holding spans stored already (or twice): make sure every
        trace has a row and a seq without counting anything, insert the spans not stored yet,
        then count those alone. Returns the new spans."""
        pairs = prepared.pairs()
        uncounted = [{**row, **_COUNTERS_ZERO} for row in trace_rows(pairs)]
        self._number_spans(
            prepared, self._upsert_traces(conn, [self._trace_stmt.parameters(uncounted)])
        )
        by_key = dict(zip(prepared.keys, prepared.spans, strict=True))
        new = [(key[0], by_key[key]) for key in self._insert_spans_checked(cursor, prepared)]
        if new:
            self._upsert_traces(conn, [self._trace_stmt.parameters(trace_rows(new))])
        return new

    def _upsert_rollups(self, conn: sa.Connection, rollups: RollupTotals) -> None:
        if len(rollups):
            self._rollup_stmt.execute(conn, [self._rollup_stmt.parameters(rollups.rows())])

    def fold_rollups(self, conn: sa.Connection, limit: int = 5_000) -> int | None:
        """Fold up to ``limit`` deferred roll-up rows into ``span_rollups`` inside the caller's
        transaction; returns how many were folded, or None when another writer is folding.

        Every key is upserted once however many batches added to it: what makes deferring
        cheaper than upserting per batch. The deltas are deleted in the same transaction, so a
        failure leaves them to the next fold and nothing is counted twice.
        """
        d = span_rollup_deltas.c
        oldest = sa.select(d.id).order_by(d.id).limit(limit)
        if self._dialect == "postgresql":
            # One folder at a time: a second one would only wait on the same roll-up rows.
            if not conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(_FOLD_LOCK))).scalar():
                return None
            oldest = oldest.with_for_update(skip_locked=True)
        folded = conn.execute(
            sa.delete(span_rollup_deltas)
            .where(d.id.in_(oldest.scalar_subquery()))
            .returning(d.project_id, d.totals)
        ).all()
        hours = RollupTotals()
        for project_id, document in folded:
            hours.add_dumped(project_id, document)
        totals = hours.with_days()
        if self._dialect == "sqlite":
            # SQLite would call the Python histogram merge once per row from inside the
            # statement, taking the GIL back each time while the write lock is held: add the
            # stored rows in here instead and write the sums (no other writer runs meanwhile).
            self._add_stored_rollups(conn, totals)
            if len(totals):
                self._replace_rollups.execute(
                    conn, [self._replace_rollups.parameters(totals.rows())]
                )
        else:
            self._upsert_rollups(conn, totals)
        return len(folded)

    def _add_stored_rollups(self, conn: sa.Connection, totals: RollupTotals) -> None:
        r = span_rollups.c
        by_slot: dict[tuple[int, str, int], list[str]] = {}
        for project_id, dimension, hour, value in totals.row_keys():
            by_slot.setdefault((project_id, dimension, hour), []).append(value)
        counters = [r[name] for name in ROLLUP_COUNTERS]
        for (project_id, dimension, hour), values in by_slot.items():
            for i in range(0, len(values), 500):
                stored = conn.execute(
                    sa.select(r.value, *counters, r.latency_hist, r.ttft_hist).where(
                        r.project_id == project_id,
                        r.dimension == dimension,
                        r.hour == hour,
                        r.value.in_(values[i : i + 500]),
                    )
                )
                for value, *numbers, latency, ttft in stored:
                    totals.add_row((project_id, dimension, hour, value), numbers, latency, ttft)

    def _insert_new_spans(self, cursor: Any, prepared: PreparedBatch) -> bool:
        """Insert the batch's spans assuming all are new; False when one was not (PostgreSQL
        has then failed the statement, SQLite skipped it: either way the caller rolls back)."""
        if self._dialect == "sqlite":
            return self._insert_sqlite(cursor, prepared.span_rows) == len(prepared.span_rows)
        try:
            self._copy_spans(cursor, "spans", prepared.span_rows)
        except psycopg.errors.UniqueViolation:
            return False
        return True

    def _insert_sqlite(self, cursor: Any, rows: list[list[Any]]) -> int:
        """Insert ``rows`` skipping spans stored already; returns how many were inserted."""
        before: int = cursor.connection.total_changes
        self._span_sql.execute(cursor, rows)
        return int(cursor.connection.total_changes) - before

    def _copy_spans(self, cursor: Any, table: str, rows: list[list[Any]]) -> None:
        # COPY in binary: PostgreSQL skips parsing text and the client escaping it.
        copy_sql = f"COPY {table} ({_SPAN_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(copy_sql) as copy:
            copy.set_types(self._copy_types)
            for row in rows:
                copy.write_row(row)

    def _insert_spans_checked(
        self, cursor: Any, prepared: PreparedBatch
    ) -> list[tuple[int, str, str]]:
        """Insert the spans not stored yet; return the keys of those actually inserted."""
        if self._dialect == "postgresql":
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS bastion_span_stage"
                " (LIKE spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._copy_spans(cursor, "bastion_span_stage", prepared.span_rows)
            cursor.execute(
                f"INSERT INTO spans ({_SPAN_COLUMN_LIST}) SELECT {_SPAN_COLUMN_LIST}"
                " FROM bastion_span_stage"
                " ON CONFLICT DO NOTHING RETURNING project_id, trace_id, span_id"
            )
            stored = [tuple(row) for row in cursor.fetchall()]
            cursor.execute("TRUNCATE bastion_span_stage")
            return stored
        if self._insert_sqlite(cursor, prepared.span_rows) == len(prepared.keys):
            return prepared.keys  # nothing was a duplicate after all
        by_project: dict[int, set[int]] = {}
        for row in prepared.span_rows:
            by_project.setdefault(row[0], set()).add(row[_TRACE_SEQ])
        markers = prepared.markers
        inserted: list[tuple[int, str, str]] = []
        for project_id, seqs in by_project.items():
            distinct = sorted(seqs)
            for i in range(0, len(distinct), 500):
                chunk = distinct[i : i + 500]
                cursor.execute(
                    "SELECT project_id, trace_id, span_id FROM spans WHERE project_id = ?"
                    f" AND trace_seq IN ({','.join('?' * len(chunk))})"
                    f" AND ingested_ns IN ({','.join('?' * len(markers))})",
                    [project_id, *chunk, *markers],
                )
                inserted.extend(cursor.fetchall())
        return inserted
