"""Erasure: one person's, session's or trace's data removed from a project, with a summary.

:func:`erase` is the one function that performs an erasure; it returns an
:class:`ErasureSummary` fit for an audit record: counts, and the subject only as a digest.
What goes (:mod:`bastion.retention.erasure_targets`): the subject's traces whole (spans,
payloads, trace rows), dataset items made from them, the eval results and scores of those
items, the traces of those results, dead letters, and for a user the roll-up rows that name
them (``user`` and ``user:day``; the other roll-ups are sums without names and stay).

No erased byte is left readable:

- **SQLite**: the transactions run with ``secure_delete``, which overwrites deleted rows and
  freed pages with zeros, and the write-ahead log is checkpointed and truncated afterwards, so
  the old page images in it go too. A reader holding an old snapshot can keep the log from
  being truncated; the summary then says so, and the next checkpoint finishes the job.
- **PostgreSQL**: deleted rows are invisible to every query at once, but their bytes stay in
  the table files as dead tuples until ``VACUUM`` marks the space free and new rows overwrite
  it (``VACUUM FULL`` rewrites the tables at once), and in write-ahead log segments, archives
  and backups until those rotate out. The summary says this.

Neither database's backups, nor response caches (they expire with their TTL), nor spans still
waiting in an ingest spool at the time are reached.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import sqlalchemy as sa

from bastion.retention.erasure_steps import (
    ErasureBusy,
    delete_items,
    delete_rejects,
    delete_results,
    delete_traces,
    delete_user_rollups,
    settle_sqlite,
)
from bastion.retention.erasure_targets import Subject, find_targets
from bastion.retention.sql import chunks, ensure_statistics
from bastion.retention.turns import Turns
from bastion.store.writer import SpanWriter

__all__ = [
    "SUBJECTS",
    "ErasureBusy",
    "ErasureError",
    "ErasureRequest",
    "ErasureSummary",
    "erase",
]

log = logging.getLogger("bastion.retention")

SUBJECTS: tuple[Subject, ...] = ("user", "trace", "session")
_ID_CHARS = 200  # the user_id and session_id columns
_HEX = frozenset("0123456789abcdef")
_TRACES_PER_BATCH = 100
_PG_NOTE = (
    "postgresql: the rows are gone from every query; their bytes remain in dead tuples "
    "until VACUUM frees the space and new rows overwrite it (VACUUM FULL at once), and in "
    "WAL segments, archives and backups until they rotate"
)


class ErasureError(ValueError):
    """An erasure request that cannot be carried out as given (the message says why)."""


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """Erase one subject of one project: a user id, a trace id or a session id."""

    project_id: int
    subject: Subject
    value: str

    @classmethod
    def of(
        cls,
        project_id: int,
        *,
        user: str | None = None,
        trace: str | None = None,
        session: str | None = None,
    ) -> ErasureRequest:
        """The request naming exactly one of ``user``, ``trace`` or ``session``.

        Raises:
            ErasureError: none or several given, or an id that cannot be stored.
        """
        given = {
            k: v
            for k, v in (("user", user), ("trace", trace), ("session", session))
            if v is not None
        }
        if len(given) != 1:
            names = ", ".join(sorted(given)) or "none"
            raise ErasureError(f"name exactly one of user, trace or session (got {names})")
        ((subject, value),) = given.items()
        if subject == "trace":
            value = value.lower()
            if len(value) != 32 or not set(value) <= _HEX:
                raise ErasureError("trace must be a trace id: 32 hexadecimal characters")
        elif not value.strip():
            raise ErasureError(f"{subject} must not be empty")
        elif len(value) > _ID_CHARS:
            raise ErasureError(
                f"{subject} is longer than the {_ID_CHARS} characters ids are stored with; "
                f"pass its first {_ID_CHARS} characters"
            )
        if "\x00" in value:
            raise ErasureError(f"{subject} holds a NUL character")
        return cls(project_id, subject, value)  # type: ignore[arg-type]

    @property
    def subject_digest(self) -> str:
        """SHA-256 of ``project:subject:value``: names the subject in a record without its id
        (whoever knows the id can check a record is about it; nobody can read the id back)."""
        return hashlib.sha256(f"{self.project_id}:{self.subject}:{self.value}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ErasureSummary:
    """What an erasure removed: counts only, the subject as a digest."""

    project_id: int
    subject: Subject
    subject_sha256: str
    traces: int
    derived_traces: int  # of ``traces``: found through eval results made from the subject
    spans: int
    dataset_items: int
    dataset_versions: int
    eval_results: int
    eval_scores: int
    rollup_rows: int
    rejects: int
    storage: str  # what became of the bytes on this database
    actor: str  # who asked: user:<name>, key:<id>, or the command line's user
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def erase(
    engine: sa.Engine,
    request: ErasureRequest,
    *,
    actor: str,
    writer: SpanWriter | None = None,
    duty_cycle: float = 0.5,
) -> ErasureSummary:
    """Erase ``request``'s subject from its project, for ``actor``, and return the summary.

    Runs in short transactions that take turns with ingestion (``duty_cycle``); what was
    found at the start is erased (spans of the subject arriving meanwhile are not).
    """
    started = time.perf_counter()
    pid = request.project_id
    turns = Turns(engine, duty_cycle=duty_cycle, secure_delete=True, writer=writer)
    ensure_statistics(engine)
    targets = turns.read(lambda c: find_targets(c, pid, request.subject, request.value))
    # First, while nothing is erased yet: the one step that can find the database too busy.
    rollups = delete_user_rollups(turns, pid, request.value) if request.subject == "user" else 0
    spans = 0
    for part in chunks(sorted(targets.traces.items()), _TRACES_PER_BATCH):
        spans += turns.run(partial(delete_traces, project_id=pid, trace_ids=dict(part)))
    rejects = turns.run(lambda c: delete_rejects(c, pid, targets.rejects))
    items = turns.run(lambda c: delete_items(c, pid, targets.items))
    results, scores = turns.run(lambda c: delete_results(c, pid, targets.results))
    storage = settle_sqlite(turns.writer) if engine.dialect.name == "sqlite" else _PG_NOTE
    summary = ErasureSummary(
        project_id=pid,
        subject=request.subject,
        subject_sha256=request.subject_digest,
        traces=len(targets.traces),
        derived_traces=targets.derived_traces,
        spans=spans,
        dataset_items=items,
        dataset_versions=len(targets.items),
        eval_results=results,
        eval_scores=scores,
        rollup_rows=rollups,
        rejects=rejects,
        storage=storage,
        actor=actor,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info(
        "erased %s %s… of project %d: %s",
        request.subject,
        summary.subject_sha256[:12],
        pid,
        summary,
    )
    return summary
