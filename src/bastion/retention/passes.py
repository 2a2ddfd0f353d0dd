"""A retention pass: every project's policy applied, kind by kind, in short batches.

:func:`plan` counts what a pass would remove (a dry run changes nothing); :func:`apply`
removes it, one bounded transaction per batch (:class:`~bastion.retention.turns.Turns`),
and reports how much of each kind went, per project. The server's job
(:mod:`bastion.retention.job`) and ``bastion retention apply`` both run these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa

from bastion.retention import counting
from bastion.retention.expiry import (
    delete_expired_rejects,
    delete_expired_results,
    delete_expired_spans,
    expired_runs,
)
from bastion.retention.payload import (
    payload_mark,
    read_payload_page,
    set_payload_mark,
    write_scrubbed,
)
from bastion.retention.policy import KINDS, Policy, policy_for
from bastion.retention.report import KindResult, PassReport, Progress
from bastion.retention.sql import chunks, ensure_statistics
from bastion.retention.turns import Stopped, Turns
from bastion.settings import Settings
from bastion.store.schema import projects

__all__ = ["RetentionError", "apply", "plan"]

_RUNS_PER_BATCH = 100


class RetentionError(ValueError):
    """A retention request names something that does not exist (a project)."""


def _projects(conn: sa.Connection, only: str | None) -> list[tuple[int, str]]:
    p = projects.c
    query = sa.select(p.id, p.slug).order_by(p.id)
    if only is not None:
        query = query.where(p.slug == only)
    found = [(int(pid), str(slug)) for pid, slug in conn.execute(query)]
    if only is not None and not found:
        raise RetentionError(f"no project {only!r}")
    return found


def _work(
    conn: sa.Connection, settings: Settings, only: str | None, now_ns: int
) -> list[tuple[int, KindResult]]:
    """Every (project id, kind) a pass has to look at, with its cut-off, in pass order."""
    out = []
    for project_id, slug in _projects(conn, only):
        policy: Policy = policy_for(settings, slug)
        for kind in KINDS:
            days, cutoff_ns = policy.days(kind), policy.cutoff_ns(kind, now_ns)
            if days is not None and cutoff_ns is not None:
                out.append((project_id, KindResult(slug, kind, days, cutoff_ns)))
    return out


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def plan(
    engine: sa.Engine, settings: Settings, *, project: str | None = None, now_ns: int | None = None
) -> PassReport:
    """Count what a pass would remove now, changing nothing (a dry run)."""
    now_ns = now_ns if now_ns is not None else _ns(datetime.now(UTC))
    report = PassReport(dry_run=True)
    with engine.connect() as conn:
        for project_id, result in _work(conn, settings, project, now_ns):
            counting.count(conn, project_id, result, policy_for(settings, result.project), now_ns)
            report.results.append(result)
    return report


def apply(
    engine: sa.Engine,
    settings: Settings,
    *,
    project: str | None = None,
    now_ns: int | None = None,
    turns: Turns | None = None,
    progress: Progress | None = None,
    rescan: bool = False,
) -> PassReport:
    """Remove what the policies say has expired, in batches of ``retention.batch_size``.

    ``rescan`` reads payloads from the oldest span again instead of from the mark. A pass
    whose ``turns`` are asked to stop returns at the next batch with ``stopped`` set.
    """
    started = datetime.now(UTC)
    now_ns = now_ns if now_ns is not None else _ns(started)
    turns = turns or Turns(engine, duty_cycle=settings.retention.duty_cycle)
    batch = settings.retention.batch_size
    report = PassReport(dry_run=False)
    with engine.connect() as conn:
        work = _work(conn, settings, project, now_ns)
    if work:
        ensure_statistics(engine)
    try:
        for project_id, result in work:
            report.results.append(result)

            def advance(rows: int, result: KindResult = result) -> None:
                result.rows += rows
                if progress is not None:
                    progress(result.project, result.kind, result.rows)

            if result.kind == "spans":
                _expire_spans(turns, project_id, result, batch, advance)
            elif result.kind == "payload":
                _drop_payloads(turns, project_id, result, batch, advance, rescan=rescan)
            else:
                _expire_results(turns, project_id, result, batch, advance)
    except Stopped:
        report.stopped = True
    report.transactions, report.busy_s = turns.transactions, turns.busy_s
    report.seconds = (datetime.now(UTC) - started).total_seconds()
    return report


def _expire_spans(
    turns: Turns, project_id: int, result: KindResult, batch: int, advance: Callable[[int], None]
) -> None:
    cutoff_ns = result.cutoff_ns
    for name in ("traces_removed", "traces_updated", "rejects"):
        result.details.setdefault(name, 0)
    start: int | None = None
    began = time.time_ns()
    while True:
        done = turns.run(
            partial(
                delete_expired_spans,
                project_id=project_id,
                cutoff_ns=cutoff_ns,
                limit=batch,
                stored_before_ns=began,
                from_ns=start,
            )
        )
        result.details["traces_removed"] += done.traces_removed
        result.details["traces_updated"] += done.traces_updated
        advance(done.spans)
        # Done when a batch found less than it could take; spans of traces a writer held
        # (skipped) are the next pass's, like spans stored since it began.
        if done.found < batch or done.last_start_ns is None:
            break
        # From its last start time on (spans deleted are gone, whatever their time); a batch
        # that could delete none (their traces held by writers) steps past them.
        start = done.last_start_ns + (1 if done.spans == 0 else 0)
    while True:
        rejects = turns.run(lambda c: delete_expired_rejects(c, project_id, result.cutoff, batch))
        result.details["rejects"] += rejects
        if rejects < batch:
            break


def _drop_payloads(
    turns: Turns,
    project_id: int,
    result: KindResult,
    batch: int,
    advance: Callable[[int], None],
    *,
    rescan: bool,
) -> None:
    cutoff_ns = result.cutoff_ns
    mark = None if rescan else turns.read(lambda c: payload_mark(c, project_id))
    result.details.setdefault("read", 0)
    if mark is not None and mark >= cutoff_ns:
        return
    after = None if mark is None else (mark, -1, "")
    while True:
        page = turns.read(
            partial(
                read_payload_page,
                project_id=project_id,
                after=after,
                cutoff_ns=cutoff_ns,
                limit=batch,
            )
        )
        if page.last is None:
            break
        through = page.last[0]

        def write(
            conn: sa.Connection, rewrites: Any = page.rewrites, through: int = through
        ) -> int:
            written = write_scrubbed(conn, rewrites)
            set_payload_mark(conn, project_id, through)
            return written

        advance(turns.run(write))
        result.details["read"] += page.read
        after = page.last
        if page.read < batch:
            break
    turns.run(lambda c: set_payload_mark(c, project_id, cutoff_ns))


def _expire_results(
    turns: Turns, project_id: int, result: KindResult, batch: int, advance: Callable[[int], None]
) -> None:
    runs = turns.read(lambda c: expired_runs(c, project_id, result.cutoff))
    result.details.setdefault("scores", 0)
    result.details["runs"] = len(runs)
    for part in chunks(runs, _RUNS_PER_BATCH):
        while True:
            results, scores = turns.run(
                partial(delete_expired_results, project_id=project_id, run_ids=part, limit=batch)
            )
            result.details["scores"] += scores
            advance(results)
            if results < batch and scores < batch:
                break
