"""Eval storage: runs and every output and score a run produces (dataset versions live in
:mod:`bastion.evals.dataset_store` and are re-exported here).

Every function takes the caller's project id and never reads another project's rows.

* **Dataset versions** are immutable and content-addressed, like prompt versions: pushing items
  whose :meth:`~bastion.evals.datasets.DatasetVersion.content_hash` a version of that name
  already has creates nothing and answers with that version. A *locked* version is a golden
  set: pushing different content under the same name is refused while the newest version is
  locked (``force=True`` overrides, creating a new version).
* **Results** are written with their scores in one transaction per batch, keyed by
  ``(run_id, item_id, repeat)``: writing a key again replaces it (a resumed run redoes only
  failed calls), so a retry never duplicates rows.
* **Output cache**: each result carries ``cache_key`` (target, item, params, repeat); an output
  stored under that key by any earlier run of the project can stand in for a model call.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from bastion.evals.compare import ResultRow, RunResults
from bastion.evals.dataset_store import (
    DatasetInfo,
    PushedDataset,
    StoredDataset,
    get_dataset,
    item_sources,
    list_datasets,
    lock_dataset,
    push_dataset,
)
from bastion.evals.scorers.base import Score
from bastion.evals.store_common import (
    DatasetLockedError,
    EvalStoreError,
    canonical_json,
    stable_hash,
    utc_now,
)
from bastion.store.schema import (
    eval_results,
    eval_runs,
    eval_scores,
)
from bastion.store.storable import storable_float, storable_key, storable_text
from bastion.store.transactions import run_write

__all__ = [
    "CachedOutput",
    "DatasetInfo",
    "DatasetLockedError",
    "EvalStoreError",
    "PushedDataset",
    "RecordedResult",
    "RunInfo",
    "StoredDataset",
    "cache_key",
    "cached_outputs",
    "create_run",
    "finish_run",
    "finished_pairs",
    "get_dataset",
    "get_run",
    "item_sources",
    "latest_run",
    "list_datasets",
    "list_runs",
    "load_results",
    "lock_dataset",
    "push_dataset",
    "record_results",
    "run_write",
    "stable_hash",
]

RunStatus = Literal["running", "completed", "failed"]
RunKind = Literal["quality", "redteam"]
RUN_KINDS: tuple[RunKind, ...] = ("quality", "redteam")
_CHUNK = 500  # keys per IN (...) query


def cache_key(target_hash: str, item_hash: str, params_hash: str, repeat: int) -> str:
    """The output cache key: same target, item content, request parameters and repeat index.

    The repeat index is part of the key so that a run with ``repeats=N`` reuses repeat *k* of an
    earlier run for its own repeat *k*, keeping N distinct samples rather than N copies of one.
    """
    raw = f"{target_hash}\0{item_hash}\0{params_hash}\0{repeat}"
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


# -- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    target_key: str
    target: Mapping[str, Any]
    target_hash: str
    dataset_name: str
    dataset_version: int
    dataset_hash: str
    scorers: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any]
    repeats: int
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    summary: Mapping[str, Any] | None
    kind: RunKind = "quality"
    prompt_name: str | None = None
    prompt_version: int | None = None

    @property
    def label(self) -> str:
        """What was evaluated, for reports: ``summarize@production (v3)``, or for a release
        ``route:checkout@production = release checkout 3f2a… (support v2)``."""
        version = self.target.get("version")
        if self.target.get("kind") == "release":
            return _release_label(self.target)
        if self.target.get("kind") == "prompt" and version is not None:
            if self.target_key.endswith(f":{version}"):
                return self.target_key
            return f"{self.target_key} (v{version})"
        return self.target_key


def _release_label(target: Mapping[str, Any]) -> str:
    text = f"release {target.get('release')} {str(target.get('release_id'))[:12]}"
    if target.get("route"):
        text = f"route:{target['route']}@{target.get('environment')} = {text}"
    if target.get("prompt"):
        text += f" ({target['prompt']} v{target.get('version')})"
    return text


def _run_info(row: Any) -> RunInfo:
    return RunInfo(
        run_id=row.run_id,
        target_key=row.target_key,
        target=orjson.loads(row.target),
        target_hash=row.target_hash,
        dataset_name=row.dataset_name,
        dataset_version=int(row.dataset_version),
        dataset_hash=row.dataset_hash,
        scorers=tuple(orjson.loads(row.scorers)),
        params=orjson.loads(row.params),
        repeats=int(row.repeats),
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        summary=None if row.summary is None else orjson.loads(row.summary),
        kind=row.kind,
        prompt_name=row.prompt_name,
        prompt_version=None if row.prompt_version is None else int(row.prompt_version),
    )


def create_run(
    engine: sa.Engine,
    project_id: int,
    *,
    target_key: str,
    target: Mapping[str, Any],
    target_hash: str,
    dataset: DatasetInfo,
    scorers: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    repeats: int,
    kind: RunKind = "quality",
) -> str:
    """Record a new run (status ``running``) and return its id (uuid4 hex).

    A prompt target's name and resolved version (``target["kind"] == "prompt"``, or the
    pinned prompt of a ``"release"`` target) are kept in their own columns, so scores can be
    shown per prompt version.
    """
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
    run_id = uuid.uuid4().hex
    prompt_name: Any = None
    if target.get("kind") == "prompt":
        prompt_name = target.get("name")
    elif target.get("kind") == "release":
        prompt_name = target.get("prompt")
    version = target.get("version") if prompt_name is not None else None

    def work(conn: sa.Connection) -> None:
        conn.execute(
            eval_runs.insert().values(
                project_id=project_id,
                run_id=run_id,
                target_key=target_key,
                target=canonical_json(dict(target)),
                target_hash=target_hash,
                dataset_name=dataset.name,
                dataset_version=dataset.version,
                dataset_hash=dataset.content_hash,
                scorers=canonical_json([dict(s) for s in scorers]),
                params=canonical_json(dict(params)),
                repeats=repeats,
                status="running",
                started_at=utc_now(),
                finished_at=None,
                summary=None,
                kind=kind,
                prompt_name=str(prompt_name)[:200] if prompt_name is not None else None,
                prompt_version=version if isinstance(version, int) else None,
            )
        )

    run_write(engine, work)
    return run_id


def finish_run(
    engine: sa.Engine,
    project_id: int,
    run_id: str,
    status: RunStatus,
    summary: Mapping[str, Any] | None = None,
) -> None:
    """Mark a run ``completed`` or ``failed`` (or back to ``running``) with its summary."""

    def work(conn: sa.Connection) -> None:
        conn.execute(
            eval_runs.update()
            .where(eval_runs.c.project_id == project_id, eval_runs.c.run_id == run_id)
            .values(
                status=status,
                finished_at=None if status == "running" else utc_now(),
                summary=None if summary is None else canonical_json(dict(summary)),
            )
        )

    run_write(engine, work)


def get_run(conn: sa.Connection, project_id: int, run_id: str) -> RunInfo:
    row = conn.execute(
        sa.select(eval_runs).where(
            eval_runs.c.project_id == project_id, eval_runs.c.run_id == run_id
        )
    ).one_or_none()
    if row is None:
        raise EvalStoreError(f"no eval run {run_id!r} in this project")
    return _run_info(row)


def latest_run(
    conn: sa.Connection,
    project_id: int,
    dataset_name: str,
    target_key: str,
    *,
    status: RunStatus | None = "completed",
) -> RunInfo:
    """The newest run of ``target_key`` (``name@label``, ``name:3``, ``model:alias``,
    ``release:<id>``) on
    dataset ``dataset_name``, with ``status`` (any when None).

    Raises:
        EvalStoreError: there is none.
    """
    query = sa.select(eval_runs).where(
        eval_runs.c.project_id == project_id,
        eval_runs.c.dataset_name == dataset_name,
        eval_runs.c.target_key == target_key,
    )
    if status is not None:
        query = query.where(eval_runs.c.status == status)
    row = conn.execute(
        query.order_by(eval_runs.c.started_at.desc(), eval_runs.c.run_id.desc()).limit(1)
    ).one_or_none()
    if row is None:
        which = f"{status} " if status else ""
        raise EvalStoreError(f"no {which}eval run of {target_key!r} on dataset {dataset_name!r}")
    return _run_info(row)


def list_runs(
    conn: sa.Connection,
    project_id: int,
    *,
    dataset_name: str | None = None,
    kind: RunKind | None = None,
    status: RunStatus | None = None,
    prompt_name: str | None = None,
    limit: int = 50,
) -> list[RunInfo]:
    """The project's runs, newest first, optionally narrowed by dataset, kind, status and
    prompt; at most ``limit`` (1 to 1000)."""
    if isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be from 1 to 1000, got {limit!r}")
    query = sa.select(eval_runs).where(eval_runs.c.project_id == project_id)
    if dataset_name is not None:
        query = query.where(eval_runs.c.dataset_name == dataset_name)
    if kind is not None:
        query = query.where(eval_runs.c.kind == kind)
    if status is not None:
        query = query.where(eval_runs.c.status == status)
    if prompt_name is not None:
        query = query.where(eval_runs.c.prompt_name == prompt_name)
    rows = conn.execute(
        query.order_by(eval_runs.c.started_at.desc(), eval_runs.c.run_id.desc()).limit(limit)
    ).all()
    return [_run_info(r) for r in rows]


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedResult:
    """One (item, repeat) of a run: the output (or the error) and its scores."""

    item_id: str
    repeat: int
    output: str | None
    cache_key: str
    scores: tuple[Score, ...] = ()
    latency_ms: float | None = None
    cost_usd: float | None = None
    trace_id: str | None = None
    error: str | None = None
    cached: bool = False


def record_results(
    engine: sa.Engine,
    project_id: int,
    run_id: str,
    results: Sequence[RecordedResult],
    *,
    replace: bool = True,
) -> None:
    """Store results and their scores in one transaction; a key already stored is replaced
    (``replace=False`` skips that check, for keys known to be new: a unique violation then)."""
    if not results:
        return
    now = utc_now()
    result_rows = [
        {
            "project_id": project_id,
            "run_id": run_id,
            "item_id": storable_key(r.item_id, 200),
            "repeat": r.repeat,
            "output": None if r.output is None else storable_text(r.output),
            "latency_ms": storable_float(r.latency_ms),
            "cost_usd": storable_float(r.cost_usd),
            "trace_id": r.trace_id,
            "error": None if r.error is None else storable_text(r.error),
            "cache_key": r.cache_key,
            "cached": r.cached,
            "created_at": now,
        }
        for r in results
    ]
    score_rows = [
        {
            "project_id": project_id,
            "run_id": run_id,
            "item_id": storable_key(r.item_id, 200),
            "repeat": r.repeat,
            "metric": storable_key(s.metric, 200),
            "value": float(s.value),
            "passed": bool(s.passed),
            "reason": storable_text(s.reason),
            "details": canonical_json(dict(s.details)),
        }
        for r in results
        for s in r.scores
    ]
    keys = {(r.item_id, r.repeat) for r in results}
    if len(keys) != len(results):
        raise ValueError("record_results: the same (item, repeat) twice in one batch")

    def work(conn: sa.Connection) -> None:
        if replace:
            for table in (eval_scores, eval_results):
                _delete_keys(conn, table, project_id, run_id, keys)
        conn.execute(eval_results.insert(), result_rows)
        if score_rows:
            conn.execute(eval_scores.insert(), score_rows)

    run_write(engine, work)


def _delete_keys(
    conn: sa.Connection,
    table: sa.Table,
    project_id: int,
    run_id: str,
    keys: Iterable[tuple[str, int]],
) -> None:
    by_repeat: dict[int, list[str]] = {}
    for item_id, repeat in keys:
        by_repeat.setdefault(repeat, []).append(item_id)
    for repeat, ids in by_repeat.items():
        for start in range(0, len(ids), _CHUNK):
            conn.execute(
                table.delete().where(
                    table.c.project_id == project_id,
                    table.c.run_id == run_id,
                    table.c.repeat == repeat,
                    table.c.item_id.in_(ids[start : start + _CHUNK]),
                )
            )


def finished_pairs(conn: sa.Connection, project_id: int, run_id: str) -> set[tuple[str, int]]:
    """``(item_id, repeat)`` of the run's results that have an output (no error)."""
    rows = conn.execute(
        sa.select(eval_results.c.item_id, eval_results.c.repeat).where(
            eval_results.c.project_id == project_id,
            eval_results.c.run_id == run_id,
            eval_results.c.error.is_(None),
        )
    )
    return {(r.item_id, int(r.repeat)) for r in rows}


@dataclass(frozen=True, slots=True)
class CachedOutput:
    output: str
    latency_ms: float | None
    cost_usd: float | None
    trace_id: str | None


def cached_outputs(
    conn: sa.Connection, project_id: int, keys: Iterable[str]
) -> dict[str, CachedOutput]:
    """Stored outputs (without error) under each of ``keys``, from any run of the project."""
    wanted = sorted(set(keys))
    found: dict[str, CachedOutput] = {}
    for start in range(0, len(wanted), _CHUNK):
        rows = conn.execute(
            sa.select(
                eval_results.c.cache_key,
                eval_results.c.output,
                eval_results.c.latency_ms,
                eval_results.c.cost_usd,
                eval_results.c.trace_id,
            ).where(
                eval_results.c.project_id == project_id,
                eval_results.c.cache_key.in_(wanted[start : start + _CHUNK]),
                eval_results.c.error.is_(None),
                eval_results.c.output.is_not(None),
            )
        )
        for r in rows:
            found.setdefault(
                r.cache_key, CachedOutput(r.output, r.latency_ms, r.cost_usd, r.trace_id)
            )
    return found


def load_results(conn: sa.Connection, project_id: int, run_id: str) -> RunResults:
    """Every score of a run as :class:`RunResults` (label: what was evaluated)."""
    info = get_run(conn, project_id, run_id)
    rows = conn.execute(
        sa.select(
            eval_scores.c.item_id,
            eval_scores.c.repeat,
            eval_scores.c.metric,
            eval_scores.c.value,
            eval_scores.c.passed,
            eval_scores.c.reason,
            eval_results.c.output,
        )
        .select_from(
            eval_scores.join(
                eval_results,
                sa.and_(
                    eval_results.c.project_id == eval_scores.c.project_id,
                    eval_results.c.run_id == eval_scores.c.run_id,
                    eval_results.c.item_id == eval_scores.c.item_id,
                    eval_results.c.repeat == eval_scores.c.repeat,
                ),
            )
        )
        .where(eval_scores.c.project_id == project_id, eval_scores.c.run_id == run_id)
        .order_by(eval_scores.c.item_id, eval_scores.c.repeat, eval_scores.c.metric)
    )
    return RunResults(
        run_id=run_id,
        label=info.label,
        rows=tuple(
            ResultRow(
                item_id=r.item_id,
                repeat=int(r.repeat),
                metric=r.metric,
                value=float(r.value),
                passed=bool(r.passed),
                output=r.output,
                reason=r.reason,
            )
            for r in rows
        ),
    )
