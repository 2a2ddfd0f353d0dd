"""Eval scores per prompt version: what the latest eval runs of each version measured.

For each version of a prompt, the newest *completed* run per (dataset, kind) - ``quality``
runs and ``redteam`` runs alike - with each metric's mean and pass rate from the run's summary.
One query over the ``(project_id, prompt_name, prompt_version, started_at)`` index of
``eval_runs``, picking the newest run per group with ``row_number()`` (SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field

from bastion.store.schema import eval_runs

__all__ = ["VersionEvalScores", "eval_scores_by_version"]


class VersionEvalScores(BaseModel):
    """The newest completed eval run of one prompt version on one dataset."""

    run_id: str
    kind: str = Field(description="quality or redteam")
    dataset: str = Field(description="name@version of the dataset")
    finished_at: datetime | None
    metrics: dict[str, float] = Field(description="metric -> mean score in [0, 1]")
    pass_rates: dict[str, float] = Field(description="metric -> share of passed scores")


def eval_scores_by_version(
    conn: sa.Connection, project_id: int, name: str
) -> dict[int, list[VersionEvalScores]]:
    """Prompt version -> its newest completed run per (dataset, kind), newest first."""
    r = eval_runs.c
    ranked = (
        sa.select(
            r.run_id, r.kind, r.prompt_version, r.dataset_name, r.dataset_version, r.started_at,
            r.finished_at, r.summary,
            sa.func.row_number()
            .over(
                partition_by=(r.prompt_version, r.dataset_name, r.kind),
                order_by=(r.started_at.desc(), r.run_id.desc()),
            )
            .label("rn"),
        )
        .where(
            r.project_id == project_id,
            r.prompt_name == name,
            r.prompt_version.is_not(None),
            r.status == "completed",
        )
        .subquery()
    )  # fmt: skip
    rows = conn.execute(
        sa.select(ranked)
        .where(ranked.c.rn == 1)
        .order_by(ranked.c.prompt_version, ranked.c.started_at.desc())
    ).all()
    found: dict[int, list[VersionEvalScores]] = {}
    for row in rows:
        summary = orjson.loads(row.summary) if row.summary else {}
        metrics = summary.get("metrics") if isinstance(summary, dict) else None
        metrics = metrics if isinstance(metrics, dict) else {}
        found.setdefault(int(row.prompt_version), []).append(
            VersionEvalScores(
                run_id=row.run_id,
                kind=row.kind,
                dataset=f"{row.dataset_name}@{row.dataset_version}",
                finished_at=row.finished_at,
                metrics={
                    m: float(v["mean"])
                    for m, v in metrics.items()
                    if isinstance(v, dict) and "mean" in v
                },
                pass_rates={
                    m: float(v["pass_rate"])
                    for m, v in metrics.items()
                    if isinstance(v, dict) and "pass_rate" in v
                },
            )
        )
    return found
