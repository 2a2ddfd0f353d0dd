"""Rollouts: a candidate release going out on a route, step by step, and its state changes.

States: ``running`` → (``paused`` ⇄ ``running``) → ``promoted`` | ``rolled_back`` | ``aborted``.
Every change — manual (``promote``, ``pause``, ``resume``, ``abort``, ``rollback``) or by the
analysis controller (``step``, ``promote``, ``rollback``) — is one transaction that updates the
rollout row, the route's stable release when it changes, and appends the history event. The
controller's changes name the step they were decided for, so a decision that raced a manual
change (or another replica) finds the row moved on and does nothing. The record and its reads
live in :mod:`bastion.releases.rollout_rows` (re-exported here). Every change takes an
optional :class:`~bastion.audit.AuditTrail` (``audit=``) and then appends its audit record in
the same transaction.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.releases.model import RolloutPolicy
from bastion.releases.rollout_rows import (
    Rollout,
    active_rollout,
    get_rollout,
    list_rollouts,
    locked_rollout,
    record_change,
    running_rollouts,
    update_rollout,
)
from bastion.releases.store import (
    ConflictError,
    NotFoundError,
    check_route,
    get_release,
    lock_route,
    now_utc,
    previous_stable,
    record_event,
    set_stable,
)
from bastion.store.schema import release_rollouts

__all__ = [
    "Rollout",
    "abort",
    "active_rollout",
    "advance",
    "claim_lease",
    "fail",
    "get_rollout",
    "list_rollouts",
    "pause",
    "promote",
    "resume",
    "rollback",
    "running_rollouts",
    "save_analysis",
    "start_rollout",
]


def start_rollout(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    candidate_ref: str,
    policy: RolloutPolicy,
    *,
    actor: str,
    gate: dict[str, Any] | None = None,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> Rollout:
    """Begin rolling ``candidate_ref`` out on a route that already has a stable release."""
    check_route(route, environment)
    candidate = get_release(conn, project_id, candidate_ref)
    current = lock_route(conn, project_id, route, environment)
    if current is None:
        raise ConflictError(
            f"route {route!r} has no stable release in {environment}: deploy one first "
            f"(bastion release deploy {route} RELEASE --env {environment})"
        )
    if current.release_id == candidate.release_id:
        raise ConflictError(
            f"release {candidate.release_id} is already the stable release of {route!r}"
        )
    existing = active_rollout(conn, project_id, route, environment)
    if existing is not None:
        raise ConflictError(
            f"route {route!r} in {environment} already has rollout {existing.rollout_id} "
            f"({existing.state}): promote, abort or roll it back first"
        )
    now = now_utc()
    rollout_id = uuid.uuid4().hex
    weight = policy.first_weight()
    conn.execute(
        release_rollouts.insert().values(
            project_id=project_id,
            rollout_id=rollout_id,
            route=route,
            environment=environment,
            strategy=policy.strategy,
            stable_release_id=current.release_id,
            candidate_release_id=candidate.release_id,
            policy=orjson.dumps(policy.to_dict()).decode(),
            state="running",
            step=0,
            weight=weight,
            step_started_at=now,
            analysis=None,
            reason=reason,
            gate=orjson.dumps(gate).decode() if gate is not None else None,
            created_by=actor[:200],
            created_at=now,
            updated_at=now,
        )
    )
    rollout = get_rollout(conn, project_id, rollout_id)
    record_change(
        conn,
        rollout,
        "start",
        actor=actor,
        stable=current.release_id,
        weight=weight,
        step=0,
        reason=reason,
        at=now,
        audit=audit,
    )
    return rollout


def _finish(
    conn: sa.Connection,
    rollout: Rollout,
    state: str,
    action: str,
    *,
    actor: str,
    reason: str | None,
    analysis: dict[str, Any] | None = None,
    audit: AuditTrail | None = None,
) -> Rollout:
    now = now_utc()
    values: dict[str, Any] = {
        "state": state,
        "reason": reason,
        "updated_at": now,
        "lease_owner": None,
        "lease_until": None,
        "weight": 100.0 if state == "promoted" else 0.0,
    }
    if analysis is not None:
        values["analysis"] = orjson.dumps(analysis).decode()
    update_rollout(conn, rollout.project_id, rollout.rollout_id, **values)
    stable = rollout.stable_release_id
    if state == "promoted":
        stable = rollout.candidate_release_id
        set_stable(conn, rollout.project_id, rollout.route, rollout.environment, stable, actor)
    record_change(
        conn,
        rollout,
        action,
        actor=actor,
        stable=stable,
        step=rollout.step,
        reason=reason,
        at=now,
        audit=audit,
    )
    return get_rollout(conn, rollout.project_id, rollout.rollout_id)


def _active_locked(conn: sa.Connection, project_id: int, route: str, environment: str) -> Rollout:
    lock_route(conn, project_id, route, environment)
    found = active_rollout(conn, project_id, route, environment)
    if found is None:
        raise ConflictError(f"route {route!r} in {environment} has no rollout in progress")
    return locked_rollout(conn, project_id, found.rollout_id)


def promote(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    *,
    actor: str,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> Rollout:
    """Make the candidate the stable release now, whatever step the rollout is at."""
    rollout = _active_locked(conn, project_id, route, environment)
    return _finish(
        conn,
        rollout,
        "promoted",
        "promote",
        actor=actor,
        reason=reason or "promoted by hand",
        audit=audit,
    )


def abort(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    *,
    actor: str,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> Rollout:
    """Stop the rollout; the stable release serves everything again."""
    rollout = _active_locked(conn, project_id, route, environment)
    return _finish(
        conn,
        rollout,
        "aborted",
        "abort",
        actor=actor,
        reason=reason or "aborted by hand",
        audit=audit,
    )


def _pause_or_resume(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    *,
    actor: str,
    reason: str | None,
    pause: bool,
    audit: AuditTrail | None = None,
) -> Rollout:
    rollout = _active_locked(conn, project_id, route, environment)
    want, action = ("paused", "pause") if pause else ("running", "resume")
    if rollout.state == want:
        raise ConflictError(f"rollout {rollout.rollout_id} is already {want}")
    now = now_utc()
    values: dict[str, Any] = {"state": want, "updated_at": now, "reason": reason}
    if not pause:
        values["step_started_at"] = now  # the bake starts over: the paused time proves nothing
    update_rollout(conn, project_id, rollout.rollout_id, **values)
    record_change(
        conn,
        rollout,
        action,
        actor=actor,
        stable=rollout.stable_release_id,
        weight=rollout.weight,
        step=rollout.step,
        reason=reason,
        at=now,
        audit=audit,
    )
    return get_rollout(conn, project_id, rollout.rollout_id)


def pause(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    *,
    actor: str,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> Rollout:
    """Hold the rollout at its current weight: no automatic step, promotion or rollback."""
    return _pause_or_resume(
        conn, project_id, route, environment, actor=actor, reason=reason, pause=True, audit=audit
    )


def resume(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    *,
    actor: str,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> Rollout:
    """Let a paused rollout go on; the bake of its current step starts over."""
    return _pause_or_resume(
        conn,
        project_id,
        route,
        environment,
        actor=actor,
        reason=reason,
        pause=False,
        audit=audit,
    )


def rollback(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    *,
    actor: str,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> str:
    """Roll back now: end the rollout in progress (stable serves everything), or, with none,
    point the route back at the stable release it had before. Returns the serving release."""
    current = lock_route(conn, project_id, route, environment)
    if current is None:
        raise NotFoundError(f"route {route!r} has no release in {environment}")
    found = active_rollout(conn, project_id, route, environment)
    if found is not None:
        rollout = locked_rollout(conn, project_id, found.rollout_id)
        _finish(
            conn,
            rollout,
            "rolled_back",
            "rollback",
            actor=actor,
            reason=reason or "rolled back by hand",
            audit=audit,
        )
        return rollout.stable_release_id
    before = previous_stable(conn, project_id, route, environment, current.release_id)
    if before is None:
        raise ConflictError(
            f"route {route!r} in {environment} has had only one release: nothing to roll back to"
        )
    set_stable(conn, project_id, route, environment, before, actor)
    record_event(
        conn,
        project_id,
        route,
        environment,
        "rollback",
        actor=actor,
        stable=before,
        reason=reason or f"rolled back from {current.release_id}",
        audit=audit,
    )
    return before


# -- the analysis controller's transitions -------------------------------------------------------


def claim_lease(
    conn: sa.Connection, project_id: int, rollout_id: str, owner: str, ttl_s: float
) -> bool:
    """Take or renew the right to decide for a running rollout (one replica at a time).

    One conditional UPDATE: it succeeds when nobody holds the lease, this owner holds it, or
    the holder let it expire; the database serialises concurrent claims on the row.
    """
    now = now_utc()
    changed = update_rollout(
        conn,
        project_id,
        rollout_id,
        release_rollouts.c.state == "running",
        sa.or_(
            release_rollouts.c.lease_owner.is_(None),
            release_rollouts.c.lease_owner == owner,
            release_rollouts.c.lease_until < now,
        ),
        lease_owner=owner,
        lease_until=now + timedelta(seconds=ttl_s),
    )
    return changed == 1


def _current(conn: sa.Connection, project_id: int, rollout_id: str, step: int) -> Rollout | None:
    # Locks in the order every change takes them — route row, then rollout row — so the
    # controller and a person acting at once queue instead of deadlocking (PostgreSQL).
    found = get_rollout(conn, project_id, rollout_id)
    lock_route(conn, project_id, found.route, found.environment)
    rollout = locked_rollout(conn, project_id, rollout_id)
    if rollout.state != "running" or rollout.step != step:
        return None  # changed by hand or by another replica since the analysis began
    return rollout


def save_analysis(
    conn: sa.Connection,
    project_id: int,
    rollout_id: str,
    step: int,
    analysis: dict[str, Any],
    reason: str | None,
) -> None:
    """Keep the latest analysis (shown by ``release status``) without changing the state."""
    update_rollout(
        conn,
        project_id,
        rollout_id,
        release_rollouts.c.step == step,
        release_rollouts.c.state == "running",
        analysis=orjson.dumps(analysis).decode(),
        reason=reason,
    )


def advance(
    conn: sa.Connection,
    project_id: int,
    rollout_id: str,
    step: int,
    analysis: dict[str, Any],
    *,
    actor: str = "analysis",
    audit: AuditTrail | None = None,
) -> Rollout | None:
    """Go to the next step (reaching 100% promotes). ``None`` if the rollout moved meanwhile."""
    rollout = _current(conn, project_id, rollout_id, step)
    if rollout is None:
        return None
    steps = rollout.policy.steps
    next_step = step + 1
    if next_step >= len(steps) or steps[next_step] >= 100:
        return _finish(
            conn,
            rollout,
            "promoted",
            "promote",
            actor=actor,
            analysis=analysis,
            reason=f"passed analysis at {rollout.weight:g}%: promoted",
            audit=audit,
        )
    now = now_utc()
    weight = steps[next_step]
    reason = f"passed analysis at {rollout.weight:g}%: next step {weight:g}%"
    update_rollout(
        conn,
        project_id,
        rollout_id,
        step=next_step,
        weight=weight,
        step_started_at=now,
        updated_at=now,
        analysis=orjson.dumps(analysis).decode(),
        reason=reason,
    )
    record_change(
        conn,
        rollout,
        "step",
        actor=actor,
        stable=rollout.stable_release_id,
        weight=weight,
        step=next_step,
        reason=reason,
        at=now,
        audit=audit,
    )
    return get_rollout(conn, project_id, rollout_id)


def fail(
    conn: sa.Connection,
    project_id: int,
    rollout_id: str,
    step: int,
    analysis: dict[str, Any],
    reason: str,
    *,
    actor: str = "analysis",
    audit: AuditTrail | None = None,
) -> Rollout | None:
    """Roll back automatically after a failed analysis. ``None`` if the rollout moved."""
    rollout = _current(conn, project_id, rollout_id, step)
    if rollout is None:
        return None
    return _finish(
        conn,
        rollout,
        "rolled_back",
        "rollback",
        actor=actor,
        reason=reason,
        analysis=analysis,
        audit=audit,
    )
