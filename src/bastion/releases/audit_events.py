"""The audit records of release changes: a release created, a route deployed or rolled back,
a rollout started, stepped, paused, resumed, promoted, aborted or rolled back.

Every change of what a route serves already appends one ``release_events`` row
(:func:`bastion.releases.store.record_event`); its audit record is written next to it, in the
same transaction, with digests of what the route served before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.store.schema import release_events

__all__ = ["RouteChange", "record_release_created", "record_route_change", "serving_before"]


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One history event of a route, as :func:`bastion.releases.store.record_event` writes it."""

    project_id: int
    route: str
    environment: str
    action: str  # deploy | rollback | start | step | pause | resume | promote | abort
    stable: str | None
    candidate: str | None
    weight: float
    rollout_id: str | None
    strategy: str | None
    step: int | None
    reason: str | None

    def serving(self) -> dict[str, Any]:
        return {"stable": self.stable, "candidate": self.candidate, "weight": self.weight}


def serving_before(
    conn: sa.Connection, project_id: int, route: str, environment: str
) -> dict[str, Any] | None:
    """What the route served before the event about to be appended (None: nothing yet)."""
    row = conn.execute(
        sa.select(
            release_events.c.stable_release_id,
            release_events.c.candidate_release_id,
            release_events.c.weight,
        )
        .where(
            release_events.c.project_id == project_id,
            release_events.c.route == route,
            release_events.c.environment == environment,
        )
        .order_by(release_events.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {
        "stable": row.stable_release_id,
        "candidate": row.candidate_release_id,
        "weight": float(row.weight),
    }


def record_route_change(
    conn: sa.Connection, audit: AuditTrail, change: RouteChange, before: dict[str, Any] | None
) -> None:
    """Record a deploy or route rollback (object: the route) or a rollout's change (object:
    the rollout)."""
    if change.rollout_id is None:
        action, object_type, object_id = (
            f"route.{change.action}",
            "route",
            f"{change.route}@{change.environment}",
        )
    else:
        action, object_type, object_id = f"rollout.{change.action}", "rollout", change.rollout_id
    audit.record(
        conn,
        action,
        object_type,
        object_id,
        project_id=change.project_id,
        before=before,
        after=change.serving(),
        details={
            "route": change.route,
            "environment": change.environment,
            "stable_release_id": change.stable,
            "candidate_release_id": change.candidate,
            "weight": change.weight,
            "strategy": change.strategy,
            "step": change.step,
        },
        reason=change.reason,
    )


def record_release_created(
    conn: sa.Connection,
    audit: AuditTrail,
    project_id: int,
    release_id: str,
    name: str,
    content_hash: str,
) -> None:
    """Record a new release (an identical spec that already exists creates nothing)."""
    audit.record(
        conn,
        "release.create",
        "release",
        release_id,
        project_id=project_id,
        after={"release_id": release_id, "content_hash": content_hash},
        details={"name": name, "content_hash": content_hash},
    )
