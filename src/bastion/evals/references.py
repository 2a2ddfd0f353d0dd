"""What ``eval compare`` and ``eval gate`` mean by a baseline or candidate that is not a run id.

A reference is a run id, a full target reference (``NAME@LABEL``, ``NAME:VERSION``,
``model:ALIAS``, ``release:ID|NAME``, ``route:NAME@ENV``), or a bare word: a label of the
prompt given with ``--prompt``, or an environment of the route given with ``--route``. A target
reference means that target's latest completed run on the dataset; release and route
references find runs by the release they resolve to *now*, so ``production`` compares what
production serves today.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.evals import store
from bastion.evals.planning import EvalSetupError, Target, parse_target, target_release
from bastion.evals.release_targets import ReleaseResolver
from bastion.names import ENVIRONMENTS

__all__ = ["REFERENCE_FORMS", "latest_run_of", "parse_reference", "stored_key"]

REFERENCE_FORMS = (
    "give (1) a run id, (2) a target: NAME@LABEL, NAME:VERSION, model:ALIAS, release:ID|NAME "
    "or route:NAME@ENV, or (3) a bare label with --prompt NAME (meaning NAME@LABEL) or a bare "
    f"environment ({', '.join(ENVIRONMENTS)}) with --route NAME (meaning route:NAME@ENV)"
)


def parse_reference(ref: str, *, prompt: str | None = None, route: str | None = None) -> Target:
    """The target ``ref`` names; ``prompt`` and ``route`` give bare words a meaning.

    Raises:
        EvalSetupError: a malformed reference, or a bare word neither option explains.
    """
    ref = ref.strip()
    if ref.startswith(("release:", "route:")):
        return parse_target(ref, prompt=prompt)
    if ref.startswith("model:") or "@" in ref or ":" in ref:
        return parse_target(ref)
    if not ref:
        raise EvalSetupError(f"an empty reference: {REFERENCE_FORMS}")
    # With both options an environment name means the route, any other word a prompt label.
    if route is not None and (ref in ENVIRONMENTS or prompt is None):
        return Target("route", route, environment=ref, prompt=prompt)
    if prompt is not None:
        return Target("prompt", prompt, label=ref)
    raise EvalSetupError(f"{ref!r} is not a run id or a target reference: {REFERENCE_FORMS}")


def stored_key(
    conn: sa.Connection, project_id: int, target: Target, releases: ReleaseResolver | None
) -> str:
    """The key runs of ``target`` are stored under (a release's id for release and route
    targets, resolved now by ``releases``)."""
    if target.kind not in ("release", "route"):
        return target.key
    return target_release(conn, project_id, target, releases).key


def latest_run_of(
    conn: sa.Connection,
    project_id: int,
    dataset: str,
    target: Target,
    releases: ReleaseResolver | None = None,
) -> store.RunInfo:
    """``target``'s latest completed run on ``dataset`` (``releases`` resolves release and
    route targets).

    Raises:
        EvalSetupError: an unknown release, route or environment.
        store.EvalStoreError: no such run (the message says how to make one).
    """
    key = stored_key(conn, project_id, target, releases)
    try:
        return store.latest_run(conn, project_id, dataset, key)
    except store.EvalStoreError:
        if target.kind not in ("release", "route"):
            raise
        serves = f" ({target.key} serves {key})" if target.kind == "route" else ""
        pick = f" --prompt {target.prompt}" if target.prompt else ""
        raise store.EvalStoreError(
            f"no completed eval run of {target.key}{serves} on dataset {dataset!r}: run "
            f"`bastion eval run --dataset {dataset} --target {target.key}{pick} ...` first"
        ) from None
