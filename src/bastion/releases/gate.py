"""The eval gate a rollout may require: evidence checked before the candidate gets traffic.

Two forms: two stored eval runs (``baseline`` and ``candidate`` run ids), compared and gated
here with the ``evals.gate`` rules of ``bastion.yaml`` (default margin 0.02 on every metric);
or a gate report already produced by ``bastion eval gate`` (its JSON), whose verdict must have
passed. Either way the evidence is stored with the rollout and named in its history.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from bastion.releases.store import ConflictError, NotFoundError, ReleaseError
from bastion.settings import Settings

__all__ = ["check_gate"]


def _rules(settings: Settings) -> Any:
    from bastion.evals.gate import GateConfigError, GateRules

    try:
        return GateRules.from_settings(settings)
    except GateConfigError as exc:
        raise ReleaseError(f"bastion.yaml: evals.gate: {exc}") from exc


def _from_runs(
    conn: sa.Connection, settings: Settings, project_id: int, baseline: str, candidate: str
) -> dict[str, Any]:
    from bastion.evals import store
    from bastion.evals.compare import compare
    from bastion.evals.gate import evaluate_gate
    from bastion.evals.report import render_json
    from bastion.evals.store_common import EvalStoreError

    infos = []
    for which, run_id in (("baseline", baseline), ("candidate", candidate)):
        try:
            info = store.get_run(conn, project_id, run_id)
        except EvalStoreError as exc:
            raise NotFoundError(f"gate: {which} run {run_id!r}: {exc}") from exc
        if info.status != "completed":
            raise ConflictError(f"gate: {which} run {run_id} is {info.status}, not completed")
        infos.append(info)
    results = [store.load_results(conn, project_id, i.run_id) for i in infos]
    comparison = compare(results[0], results[1])
    doc: dict[str, Any] = json.loads(
        render_json(comparison, evaluate_gate(comparison, _rules(settings)))
    )
    return doc


def check_gate(
    conn: sa.Connection, settings: Settings, project_id: int, gate: dict[str, Any]
) -> dict[str, Any]:
    """The gate's evidence if it passed; :class:`ConflictError` naming the failures if not."""
    if "report" in gate:
        doc = gate["report"]
        source = "report"
    elif "baseline" in gate and "candidate" in gate:
        doc = _from_runs(conn, settings, project_id, str(gate["baseline"]), str(gate["candidate"]))
        source = "runs"
    else:
        raise ReleaseError("gate must give {baseline, candidate} run ids or a gate report")
    verdict = doc.get("verdict") if isinstance(doc, dict) else None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
        raise ReleaseError("gate report has no verdict.passed: give bastion eval gate's JSON")
    evidence = {
        "source": source,
        "passed": verdict["passed"],
        "baseline_run": (doc.get("baseline") or {}).get("run_id"),
        "candidate_run": (doc.get("candidate") or {}).get("run_id"),
        "failures": list(verdict.get("failures") or []),
    }
    if not verdict["passed"]:
        failures = "; ".join(evidence["failures"]) or "the gate did not pass"
        raise ConflictError(f"the required eval gate failed: {failures}")
    return evidence
