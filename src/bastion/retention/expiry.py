"""One batch of expired rows deleted: spans (with their traces' summaries), dead letters,
and per-item eval results and scores.

Each function deletes at most ``limit`` rows inside the caller's transaction and returns
what it did; the caller (:mod:`bastion.retention.passes`) repeats it, one short transaction
a batch, until a batch finds fewer rows than it could take.

Roll-ups stay: ``span_rollups`` (hourly and day) are sums without content, so metrics and
summaries over long periods keep their history when the raw spans are gone. Trace summaries
follow their spans (:mod:`bastion.retention.summaries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bastion.retention.sql import among, delete_keys, in_index_order
from bastion.retention.summaries import lock_traces, resummarise_traces
from bastion.store.schema import eval_results, eval_runs, eval_scores, ingest_rejects, spans

__all__ = [
    "SpanBatch",
    "delete_expired_rejects",
    "delete_expired_results",
    "delete_expired_spans",
    "expired_runs",
]


@dataclass(frozen=True, slots=True)
class SpanBatch:
    """What one batch of span deletion did."""

    found: int  # expired spans the batch looked at
    spans: int  # spans deleted
    traces_removed: int  # trace rows deleted (no span left)
    traces_updated: int  # trace rows summarised again from the spans left
    last_start_ns: int | None  # where the next batch starts (None: nothing was found)


def delete_expired_spans(
    conn: sa.Connection,
    project_id: int,
    cutoff_ns: int,
    limit: int,
    *,
    stored_before_ns: int,
    from_ns: int | None = None,
) -> SpanBatch:
    """Delete up to ``limit`` spans of the project that started before ``cutoff_ns`` and
    were stored before ``stored_before_ns`` (not before ``from_ns``, where the previous batch
    stopped), oldest first, and bring their traces' rows in line with what remains.

    Only spans stored before the pass began: late spans of old traces arriving as fast as a
    pass deletes them would otherwise keep it going for ever; they are the next pass's.
    """
    s = spans.c
    where = [
        s.project_id == project_id,
        s.start_ns < cutoff_ns,
        s.ingested_ns < stored_before_ns,
    ]
    if from_ns is not None:
        where.append(s.start_ns >= from_ns)
    with in_index_order(conn):
        found = conn.execute(
            sa.select(s.trace_seq, s.trace_id, s.span_id, s.start_ns)
            .where(*where)
            .order_by(s.start_ns)
            .limit(limit)
        ).all()
    if not found:
        return SpanBatch(0, 0, 0, 0, None)
    free = lock_traces(conn, project_id, {row.trace_id for row in found})
    taken = [row for row in found if row.trace_id in free]
    keys = [(row.trace_seq, row.span_id) for row in taken]
    deleted = delete_keys(conn, spans, project_id, ("trace_seq", "span_id"), keys)
    removed, updated = resummarise_traces(
        conn, project_id, {row.trace_seq: row.trace_id for row in taken}
    )
    return SpanBatch(len(found), deleted, removed, updated, int(found[-1].start_ns))


def delete_expired_rejects(
    conn: sa.Connection, project_id: int, cutoff: datetime, limit: int
) -> int:
    """Delete up to ``limit`` dead letters of the project refused before ``cutoff`` (they
    hold whole spans, so they expire with the spans)."""
    r = ingest_rejects.c
    oldest = (
        sa.select(r.id)
        .where(r.project_id == project_id, r.rejected_at < cutoff)
        .order_by(r.id)
        .limit(limit)
    )
    ids = list(conn.execute(oldest).scalars())
    if not ids:
        return 0
    return int(
        conn.execute(
            sa.delete(ingest_rejects).where(
                r.project_id == project_id, among(r.id, ids, conn.dialect.name)
            )
        ).rowcount
    )


def expired_runs(conn: sa.Connection, project_id: int, cutoff: datetime) -> list[str]:
    """The eval runs of the project that finished before ``cutoff`` (a running run has no
    finish time and is never expired)."""
    r = eval_runs.c
    return list(
        conn.execute(
            sa.select(r.run_id)
            .where(r.project_id == project_id, r.finished_at < cutoff)
            .order_by(r.run_id)
        ).scalars()
    )


def delete_expired_results(
    conn: sa.Connection, project_id: int, run_ids: Sequence[str], limit: int
) -> tuple[int, int]:
    """Delete up to ``limit`` per-item results and as many scores of the runs ``run_ids``;
    returns ``(results, scores)`` deleted. The runs and their summaries stay."""
    if not run_ids:
        return 0, 0
    counts = []
    for table in (eval_scores, eval_results):
        c = table.c
        names = ("run_id", "item_id", "repeat", *(("metric",) if table is eval_scores else ()))
        rows = conn.execute(
            sa.select(*(c[name] for name in names))
            .where(c.project_id == project_id, among(c.run_id, run_ids, conn.dialect.name))
            .limit(limit)
        ).all()
        counts.append(delete_keys(conn, table, project_id, names, [tuple(r) for r in rows]))
    scores, results = counts
    return results, scores
