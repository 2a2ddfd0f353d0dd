"""The stored rollout: its record, the reads of it, and the two writes every change makes
(the row's new values and the route's history event). :mod:`bastion.releases.rollouts` holds
the state changes built from them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.releases.model import RolloutPolicy
from bastion.releases.store import (
    ACTIVE_STATES,
    NotFoundError,
    active_on_route,
    aware,
    record_event,
)
from bastion.store.schema import release_rollouts

__all__ = [
    "Rollout",
    "active_rollout",
    "get_rollout",
    "list_rollouts",
    "locked_rollout",
    "record_change",
    "running_rollouts",
    "update_rollout",
]


@dataclass(frozen=True, slots=True)
class Rollout:
    """One rollout as stored."""

    project_id: int
    rollout_id: str
    route: str
    environment: str
    strategy: str
    stable_release_id: str
    candidate_release_id: str
    policy: RolloutPolicy
    state: str
    step: int
    weight: float
    step_started_at: datetime
    analysis: dict[str, Any] | None
    reason: str | None
    gate: dict[str, Any] | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "route": self.route,
            "environment": self.environment,
            "strategy": self.strategy,
            "stable_release_id": self.stable_release_id,
            "candidate_release_id": self.candidate_release_id,
            "policy": self.policy.to_dict(),
            "state": self.state,
            "step": self.step,
            "weight": self.weight,
            "step_started_at": self.step_started_at.isoformat(),
            "analysis": self.analysis,
            "reason": self.reason,
            "gate": self.gate,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _rollout(row: Any) -> Rollout:
    return Rollout(
        project_id=int(row.project_id),
        rollout_id=row.rollout_id,
        route=row.route,
        environment=row.environment,
        strategy=row.strategy,
        stable_release_id=row.stable_release_id,
        candidate_release_id=row.candidate_release_id,
        policy=RolloutPolicy.from_dict(orjson.loads(row.policy)),
        state=row.state,
        step=int(row.step),
        weight=float(row.weight),
        step_started_at=aware(row.step_started_at),
        analysis=orjson.loads(row.analysis) if row.analysis else None,
        reason=row.reason,
        gate=orjson.loads(row.gate) if row.gate else None,
        created_by=row.created_by,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


def _where(project_id: int, rollout_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        release_rollouts.c.project_id == project_id, release_rollouts.c.rollout_id == rollout_id
    )


def _fetch(conn: sa.Connection, project_id: int, rollout_id: str, *, lock: bool) -> Rollout:
    query = sa.select(release_rollouts).where(_where(project_id, rollout_id))
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"no rollout {rollout_id!r} in this project")
    return _rollout(row)


def locked_rollout(conn: sa.Connection, project_id: int, rollout_id: str) -> Rollout:
    """The rollout, its row locked for this transaction (PostgreSQL; SQLite locks on write)."""
    return _fetch(conn, project_id, rollout_id, lock=True)


def get_rollout(conn: sa.Connection, project_id: int, rollout_id: str) -> Rollout:
    """The rollout ``rollout_id`` (``NotFoundError`` if the project has none such)."""
    return _fetch(conn, project_id, rollout_id, lock=False)


def update_rollout(
    conn: sa.Connection,
    project_id: int,
    rollout_id: str,
    *conditions: sa.ColumnElement[bool],
    **values: Any,
) -> int:
    """Update the rollout row (when ``conditions`` hold too); how many rows changed."""
    result = conn.execute(
        release_rollouts.update()
        .where(_where(project_id, rollout_id), *conditions)
        .values(**values)
    )
    return int(result.rowcount)


def record_change(
    conn: sa.Connection,
    rollout: Rollout,
    action: str,
    *,
    actor: str,
    stable: str,
    step: int,
    reason: str | None,
    at: datetime,
    weight: float | None = None,
    audit: AuditTrail | None = None,
) -> None:
    """Append the history event of a change to ``rollout``. With ``weight`` the candidate
    still serves that share; without, the rollout is over and ``stable`` serves everything."""
    record_event(
        conn,
        rollout.project_id,
        rollout.route,
        rollout.environment,
        action,
        actor=actor,
        stable=stable,
        candidate=None if weight is None else rollout.candidate_release_id,
        weight=0.0 if weight is None else weight,
        rollout_id=rollout.rollout_id,
        strategy=rollout.strategy,
        step=step,
        reason=reason,
        at=at,
        audit=audit,
    )


def active_rollout(
    conn: sa.Connection, project_id: int, route: str, environment: str
) -> Rollout | None:
    """The route's running or paused rollout, if any (at most one exists)."""
    row = conn.execute(
        sa.select(release_rollouts)
        .where(active_on_route(project_id, route, environment))
        .order_by(release_rollouts.c.created_at.desc())
        .limit(1)
    ).first()
    return _rollout(row) if row is not None else None


def list_rollouts(
    conn: sa.Connection, project_id: int, route: str | None = None, *, limit: int = 50
) -> list[Rollout]:
    query = sa.select(release_rollouts).where(release_rollouts.c.project_id == project_id)
    if route is not None:
        query = query.where(release_rollouts.c.route == route)
    rows = conn.execute(query.order_by(release_rollouts.c.created_at.desc()).limit(limit)).all()
    return [_rollout(r) for r in rows]


def running_rollouts(conn: sa.Connection) -> list[Rollout]:
    """Every running rollout of every project (the analysis controller's work list)."""
    rows = conn.execute(
        sa.select(release_rollouts).where(release_rollouts.c.state == "running")
    ).all()
    return [_rollout(r) for r in rows]
