"""The deletions of an erasure, each inside the caller's transaction (or its own turns)."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence

import sqlalchemy as sa

from bastion.retention.sql import among, chunks, delete_keys
from bastion.retention.turns import Turns
from bastion.store.aggregates import DAY_SUFFIX
from bastion.store.schema import (
    eval_dataset_items,
    eval_datasets,
    eval_item_sources,
    eval_results,
    eval_scores,
    ingest_rejects,
    span_rollup_deltas,
    span_rollups,
    spans,
    traces,
)
from bastion.store.writer import SpanWriter

__all__ = [
    "ErasureBusy",
    "delete_items",
    "delete_rejects",
    "delete_results",
    "delete_traces",
    "delete_user_rollups",
    "settle_sqlite",
]

_CHUNK = 500
_FOLD_ATTEMPTS = 50


class ErasureBusy(RuntimeError):
    """The database was too busy to finish a step; the erasure can be asked for again."""


def delete_traces(conn: sa.Connection, project_id: int, trace_ids: Mapping[int, str]) -> int:
    """Delete the traces ``trace_ids`` (seq to trace id) whole, spans and rows; returns the
    spans deleted."""
    s, t = spans.c, traces.c
    dialect = conn.dialect.name
    deleted = conn.execute(
        sa.delete(spans).where(
            s.project_id == project_id, among(s.trace_seq, sorted(trace_ids), dialect)
        )
    ).rowcount
    conn.execute(
        sa.delete(traces).where(
            t.project_id == project_id, among(t.trace_id, sorted(trace_ids.values()), dialect)
        )
    )
    return int(deleted)


def delete_rejects(conn: sa.Connection, project_id: int, ids: Sequence[int]) -> int:
    """Delete the dead letters ``ids`` of the project."""
    r = ingest_rejects.c
    deleted = 0
    for part in chunks(ids, _CHUNK):
        deleted += conn.execute(
            sa.delete(ingest_rejects).where(
                r.project_id == project_id, among(r.id, part, conn.dialect.name)
            )
        ).rowcount
    return deleted


def delete_items(conn: sa.Connection, project_id: int, items: Mapping[int, Collection[str]]) -> int:
    """Delete dataset items (and their source links) by dataset version, and set each
    version's item count to what is left; returns the items deleted.

    A version keeps its content hash: it names what the version was made as, and eval runs
    recorded it; the items erased from it are simply no longer there.
    """
    dialect = conn.dialect.name
    di, src, d = eval_dataset_items.c, eval_item_sources.c, eval_datasets.c
    deleted = 0
    for version_id, item_ids in sorted(items.items()):
        for part in chunks(sorted(item_ids), _CHUNK):
            deleted += conn.execute(
                sa.delete(eval_dataset_items).where(
                    di.project_id == project_id,
                    di.dataset_version_id == version_id,
                    among(di.item_id, part, dialect),
                )
            ).rowcount
            conn.execute(
                sa.delete(eval_item_sources).where(
                    src.project_id == project_id,
                    src.dataset_version_id == version_id,
                    among(src.item_id, part, dialect),
                )
            )
        left = (
            sa.select(sa.func.count())
            .select_from(eval_dataset_items)
            .where(di.project_id == project_id, di.dataset_version_id == version_id)
            .scalar_subquery()
        )
        conn.execute(
            sa.update(eval_datasets)
            .where(d.project_id == project_id, d.id == version_id)
            .values(item_count=left)
        )
    return deleted


def delete_results(
    conn: sa.Connection, project_id: int, keys: Collection[tuple[str, str, int]]
) -> tuple[int, int]:
    """Delete eval results ``(run, item, repeat)`` and their scores; returns both counts."""
    names = ("run_id", "item_id", "repeat")
    wanted = set(keys)
    results = delete_keys(conn, eval_results, project_id, names, sorted(wanted))
    scores = 0
    if wanted:
        # Scores have a metric besides: the ones of those results are found by their prefix.
        c = eval_scores.c
        found = [
            tuple(row)
            for part in chunks(sorted({run for run, _, _ in wanted}), _CHUNK)
            for row in conn.execute(
                sa.select(c.run_id, c.item_id, c.repeat, c.metric).where(
                    c.project_id == project_id, among(c.run_id, part, conn.dialect.name)
                )
            )
            if (row.run_id, row.item_id, row.repeat) in wanted
        ]
        scores = delete_keys(conn, eval_scores, project_id, (*names, "metric"), found)
    return results, scores


def delete_user_rollups(turns: Turns, project_id: int, user: str) -> int:
    """Delete the roll-up rows naming ``user`` (the ``user`` dimension, hourly and daily).

    The deferred counters stored before the erasure are folded into the roll-ups first, so
    none of them brings the user's name back afterwards (on PostgreSQL, while another writer
    folds, this waits its turn). Counters of spans arriving later are theirs to fold."""
    d = span_rollup_deltas.c
    newest = turns.read(lambda c: c.execute(sa.select(sa.func.max(d.id))).scalar())
    attempts = 0
    while newest is not None and turns.read(
        lambda c: c.execute(sa.select(d.id).where(d.id <= newest).limit(1)).scalar()
    ):
        attempts += 1
        if attempts > _FOLD_ATTEMPTS:
            raise ErasureBusy("could not fold the roll-up counters before erasing: try again")
        if turns.run(lambda c: turns.writer.fold_rollups(c)) is None:
            time.sleep(0.05)  # another writer is folding them: wait for it
    r = span_rollups.c

    def work(conn: sa.Connection) -> int:
        return int(
            conn.execute(
                sa.delete(span_rollups).where(
                    r.project_id == project_id,
                    r.dimension.in_(["user", "user" + DAY_SUFFIX]),
                    r.value == user,
                )
            ).rowcount
        )

    return turns.run(work)


def settle_sqlite(writer: SpanWriter) -> str:
    """Checkpoint SQLite's write-ahead log into the database file and truncate it, so the
    page images it held before the erasure are gone; says how that went.

    Taken in turn with the span writers (a checkpoint cannot finish while one writes), in
    autocommit: a checkpoint inside a transaction cannot finish either."""
    with writer.transaction() as conn:
        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        return (
            "sqlite: deleted rows and freed pages overwritten with zeros; the write-ahead log "
            "is held by a reader and keeps old page images until the next checkpoint"
        )
    return "sqlite: deleted rows and freed pages overwritten with zeros; write-ahead log truncated"
