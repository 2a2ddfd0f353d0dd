"""The eval gate an approval rule may require (``eval_gate: {dataset, min_pass_rate}``).

The new thing — a prompt version a label moves to, a release a rollout or deploy puts out —
must have a completed quality eval run on the rule's dataset. When what it replaces (the
label's current version, the route's stable release) exists, it must have one too, and the
newest runs of the two are compared with the ``evals.gate`` rules of bastion.yaml (the same
check as ``bastion eval gate`` and a rollout's own gate). With ``min_pass_rate`` every metric
of the new run must also pass at least that often.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bastion.approvals.model import ApprovalRequired
from bastion.evals import store as eval_store
from bastion.releases.gate import check_gate
from bastion.releases.store import ReleaseError
from bastion.settings import EvalGateRequirement, Settings
from bastion.store.schema import eval_runs

__all__ = ["GateSubject", "evaluate_gate"]


@dataclass(frozen=True, slots=True)
class GateSubject:
    """What an eval run evaluated: a prompt version, or a release (by id)."""

    prompt: str | None = None
    version: int | None = None
    release_id: str | None = None

    @property
    def label(self) -> str:
        if self.release_id is not None:
            return f"release:{self.release_id}"
        return f"{self.prompt}:{self.version}"


def _newest_run(
    conn: sa.Connection, project_id: int, dataset: str, subject: GateSubject
) -> eval_store.RunInfo | None:
    query = sa.select(eval_runs.c.run_id).where(
        eval_runs.c.project_id == project_id,
        eval_runs.c.dataset_name == dataset,
        eval_runs.c.status == "completed",
        eval_runs.c.kind == "quality",
    )
    if subject.release_id is not None:
        key = f"release:{subject.release_id}"
        query = query.where(
            sa.or_(eval_runs.c.target_key == key, eval_runs.c.target_key.startswith(key + "/"))
        )
    else:
        # A prompt target (name, name@label, name:N), never a release that pins the version:
        # a release calls it with its own model and parameters.
        query = query.where(
            eval_runs.c.prompt_name == subject.prompt,
            eval_runs.c.prompt_version == subject.version,
            sa.not_(eval_runs.c.target_key.startswith("release:")),
        )
    run_id = conn.execute(
        query.order_by(eval_runs.c.started_at.desc(), eval_runs.c.run_id.desc()).limit(1)
    ).scalar()
    return None if run_id is None else eval_store.get_run(conn, project_id, str(run_id))


def _missing(what: str, subject: GateSubject, dataset: str, where: str) -> ApprovalRequired:
    return ApprovalRequired(
        f"the eval gate of {where} needs a completed eval run of {what} {subject.label} on "
        f"dataset {dataset!r}, and there is none: run `bastion eval run --target "
        f"{subject.label} --dataset {dataset}` first"
    )


def _low_pass_rates(run: eval_store.RunInfo, minimum: float) -> list[str]:
    metrics = (run.summary or {}).get("metrics") or {}
    low = []
    for metric, stats in sorted(metrics.items()):
        rate = stats.get("pass_rate") if isinstance(stats, dict) else None
        if isinstance(rate, int | float) and rate < minimum:
            low.append(f"{metric} passes {rate:.3f} < {minimum:g}")
    if not metrics:
        low.append("the run has no scored metric")
    return low


def evaluate_gate(
    conn: sa.Connection,
    settings: Settings,
    project_id: int,
    requirement: EvalGateRequirement,
    *,
    candidate: GateSubject,
    baseline: GateSubject | None,
    where: str,
) -> dict[str, Any]:
    """The gate's evidence when it passes; :class:`ApprovalRequired` naming what failed or
    is missing when not. ``where`` names the rule (``projects.<slug>.approvals.<rule>``)."""
    dataset = requirement.dataset
    if dataset is None:
        return {}
    new_run = _newest_run(conn, project_id, dataset, candidate)
    if new_run is None:
        raise _missing("the new", candidate, dataset, where)
    evidence: dict[str, Any] = {
        "dataset": dataset,
        "candidate": candidate.label,
        "candidate_run": new_run.run_id,
        "baseline": None if baseline is None else baseline.label,
        "baseline_run": None,
    }
    if baseline is not None:
        old_run = _newest_run(conn, project_id, dataset, baseline)
        if old_run is None:
            raise _missing("the current", baseline, dataset, where)
        evidence["baseline_run"] = old_run.run_id
        try:
            check_gate(
                conn,
                settings,
                project_id,
                {"baseline": old_run.run_id, "candidate": new_run.run_id},
            )
        except ReleaseError as exc:
            raise ApprovalRequired(f"the eval gate of {where} failed: {exc}") from exc
    if requirement.min_pass_rate is not None:
        low = _low_pass_rates(new_run, requirement.min_pass_rate)
        if low:
            raise ApprovalRequired(
                f"the eval gate of {where} failed on run {new_run.run_id}: {'; '.join(low)}"
            )
    evidence["passed"] = True
    return evidence
