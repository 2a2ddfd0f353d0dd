"""What a pass would remove, counted without changing anything (``--dry-run``).

Spans, dead letters, results and scores are counted exactly. Trace rows are counted as the
traces that started before the cut-off (each loses spans: its row goes or is summarised
again). Payloads are counted as the spans a pass would read (the ones started before the
cut-off and after the project's mark): an upper bound, since a span without payload is read
but left as it is.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.retention.payload import payload_mark
from bastion.retention.policy import Policy
from bastion.retention.report import KindResult
from bastion.retention.sql import among
from bastion.store.schema import eval_results, eval_runs, eval_scores, ingest_rejects, spans, traces

__all__ = ["count"]


def _count(conn: sa.Connection, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
    )


def count(
    conn: sa.Connection, project_id: int, result: KindResult, policy: Policy, now_ns: int
) -> None:
    """Fill ``result`` with the rows its kind would lose now."""
    cutoff_ns = result.cutoff_ns
    s, t, r = spans.c, traces.c, ingest_rejects.c
    if result.kind == "spans":
        result.rows = _count(conn, spans, s.project_id == project_id, s.start_ns < cutoff_ns)
        result.details["traces_affected"] = _count(
            conn, traces, t.project_id == project_id, t.start_ns < cutoff_ns
        )
        result.details["rejects"] = _count(
            conn, ingest_rejects, r.project_id == project_id, r.rejected_at < result.cutoff
        )
    elif result.kind == "payload":
        where = [s.project_id == project_id, s.start_ns < cutoff_ns]
        mark = payload_mark(conn, project_id)
        if mark is not None:
            where.append(s.start_ns >= mark)
        spans_cutoff = policy.cutoff_ns("spans", now_ns)
        if spans_cutoff is not None:
            where.append(s.start_ns >= spans_cutoff)  # those go with their spans first
        result.rows = _count(conn, spans, *where)
    else:
        run = eval_runs.c
        runs = list(
            conn.execute(
                sa.select(run.run_id).where(
                    run.project_id == project_id, run.finished_at < result.cutoff
                )
            ).scalars()
        )
        result.details["runs"] = len(runs)
        if not runs:
            result.rows = result.details["scores"] = 0
            return
        dialect = conn.dialect.name
        er, es = eval_results.c, eval_scores.c
        result.rows = _count(
            conn, eval_results, er.project_id == project_id, among(er.run_id, runs, dialect)
        )
        result.details["scores"] = _count(
            conn, eval_scores, es.project_id == project_id, among(es.run_id, runs, dialect)
        )
