"""What an erasure removes: the subject's traces and everything made from them.

The unit is the trace: a user's or a session's id is usually on a trace's root span only,
while the child spans carry the same person's text, so every trace holding a span of the
subject goes whole. Found from the trace rows (indexed by user and session) and from a scan
of the project's spans (a span of the subject in a trace whose row names someone else).

Made from them, and erased with them:

- dataset items snapshotted from those traces (``eval_item_sources``);
- the per-item eval results and scores of those items, and any result recorded on one of
  those traces;
- the traces of those results (an eval run's calls carry the item's text), and in turn what
  was made from them, until nothing new turns up;
- dead letters (``ingest_rejects``) of those traces or naming the subject.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import orjson
import sqlalchemy as sa

from bastion.retention.sql import among, chunks
from bastion.store.schema import (
    eval_datasets,
    eval_item_sources,
    eval_results,
    eval_runs,
    ingest_rejects,
    spans,
    traces,
)

__all__ = ["Subject", "Targets", "find_targets"]

Subject = Literal["user", "trace", "session"]
_CHUNK = 500
_REJECT_PAGE = 1000


@dataclass(slots=True)
class Targets:
    """Everything one erasure removes (found by :func:`find_targets`)."""

    traces: dict[int, str] = field(default_factory=dict)  # seq -> trace id
    derived_traces: int = 0  # traces found through eval results, not the subject
    items: dict[int, set[str]] = field(default_factory=dict)  # dataset version id -> item ids
    results: set[tuple[str, str, int]] = field(default_factory=set)  # run, item, repeat
    rejects: list[int] = field(default_factory=list)  # ingest_rejects ids


def _subject_traces(
    conn: sa.Connection, project_id: int, subject: Subject, value: str
) -> dict[int, str]:
    t, s = traces.c, spans.c
    if subject == "trace":
        rows = conn.execute(
            sa.select(t.seq, t.trace_id).where(t.project_id == project_id, t.trace_id == value)
        )
        return {int(seq): trace_id for seq, trace_id in rows}
    trace_column, span_column = (
        (t.user_id, s.user_id) if subject == "user" else (t.session_id, s.session_id)
    )
    found = {
        int(seq): trace_id
        for seq, trace_id in conn.execute(
            sa.select(t.seq, t.trace_id).where(t.project_id == project_id, trace_column == value)
        )
    }
    # No index leads with the span's user or session: this reads the project's spans once.
    for seq, trace_id in conn.execute(
        sa.select(s.trace_seq, s.trace_id)
        .where(s.project_id == project_id, span_column == value)
        .distinct()
    ):
        found.setdefault(int(seq), trace_id)
    return found


def _items_of(
    conn: sa.Connection, project_id: int, trace_ids: list[str], targets: Targets
) -> dict[int, set[str]]:
    """Dataset items made from ``trace_ids`` not yet in ``targets``, by dataset version."""
    src = eval_item_sources.c
    new: dict[int, set[str]] = {}
    for part in chunks(trace_ids, _CHUNK):
        for version_id, item_id in conn.execute(
            sa.select(src.dataset_version_id, src.item_id).where(
                src.project_id == project_id, among(src.trace_id, part, conn.dialect.name)
            )
        ):
            if item_id not in targets.items.get(version_id, set()):
                new.setdefault(int(version_id), set()).add(item_id)
    return new


def _results_of(
    conn: sa.Connection, project_id: int, items: dict[int, set[str]], trace_ids: list[str]
) -> set[tuple[str, str, int, str | None]]:
    """Results of runs over ``items`` and results recorded on ``trace_ids``."""
    d, run, res = eval_datasets.c, eval_runs.c, eval_results.c
    dialect = conn.dialect.name
    columns = (res.run_id, res.item_id, res.repeat, res.trace_id)
    found: set[tuple[str, str, int, str | None]] = set()
    for version_id, item_ids in items.items():
        runs = conn.execute(
            sa.select(run.run_id)
            .select_from(
                eval_runs.join(
                    eval_datasets,
                    sa.and_(
                        d.project_id == run.project_id,
                        d.name == run.dataset_name,
                        d.version == run.dataset_version,
                    ),
                )
            )
            .where(run.project_id == project_id, d.id == version_id)
        ).scalars()
        run_ids = list(runs)
        for part in chunks(sorted(item_ids), _CHUNK):
            if run_ids:
                found.update(
                    (r, i, int(n), tr)
                    for r, i, n, tr in conn.execute(
                        sa.select(*columns).where(
                            res.project_id == project_id,
                            among(res.run_id, run_ids, dialect),
                            among(res.item_id, part, dialect),
                        )
                    )
                )
    # Results are not indexed by trace: this reads the project's results once per round.
    for part in chunks(trace_ids, _CHUNK):
        found.update(
            (r, i, int(n), tr)
            for r, i, n, tr in conn.execute(
                sa.select(*columns).where(
                    res.project_id == project_id, among(res.trace_id, part, dialect)
                )
            )
        )
    return found


def _seqs_of(conn: sa.Connection, project_id: int, trace_ids: Iterable[str]) -> dict[int, str]:
    t = traces.c
    out: dict[int, str] = {}
    for part in chunks(sorted(trace_ids), _CHUNK):
        out.update(
            (int(seq), trace_id)
            for seq, trace_id in conn.execute(
                sa.select(t.seq, t.trace_id).where(
                    t.project_id == project_id, among(t.trace_id, part, conn.dialect.name)
                )
            )
        )
    return out


def _rejects(
    conn: sa.Connection, project_id: int, subject: Subject, value: str, trace_ids: set[str]
) -> list[int]:
    """Dead letters of the erased traces or whose span names the subject (each is read:
    the subject may sit anywhere in the kept record)."""
    r = ingest_rejects.c
    field_name = {"user": "user_id", "session": "session_id", "trace": "trace_id"}[subject]
    found: list[int] = []
    after = 0
    while True:
        page = conn.execute(
            sa.select(r.id, r.trace_id, r.record)
            .where(r.project_id == project_id, r.id > after)
            .order_by(r.id)
            .limit(_REJECT_PAGE)
        ).all()
        for reject_id, trace_id, record in page:
            try:
                named = orjson.loads(record).get(field_name) == value
            except (orjson.JSONDecodeError, AttributeError):
                named = False
            if named or trace_id in trace_ids:
                found.append(int(reject_id))
        if len(page) < _REJECT_PAGE:
            return found
        after = int(page[-1].id)


def find_targets(conn: sa.Connection, project_id: int, subject: Subject, value: str) -> Targets:
    """Everything erasing ``subject`` ``value`` in the project removes (reads only)."""
    targets = Targets(traces=_subject_traces(conn, project_id, subject, value))
    erased_ids = set(targets.traces.values())
    if subject == "trace":
        erased_ids.add(value)  # its dead letters and derived items even without a trace row
    frontier = sorted(erased_ids)
    while frontier:
        items = _items_of(conn, project_id, frontier, targets)
        for version_id, item_ids in items.items():
            targets.items.setdefault(version_id, set()).update(item_ids)
        results = _results_of(conn, project_id, items, frontier)
        targets.results.update((r, i, n) for r, i, n, _ in results)
        new_ids = {tr for *_, tr in results if tr is not None and tr not in erased_ids}
        erased_ids |= new_ids
        found = _seqs_of(conn, project_id, new_ids)
        targets.derived_traces += len(found)
        targets.traces.update(found)
        frontier = sorted(new_ids)
    targets.rejects = _rejects(conn, project_id, subject, value, erased_ids)
    return targets
