"""Read models shared by the API and the CLI: a route's status and the list of routes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from bastion.releases import rollouts, store

__all__ = ["route_list", "route_status"]


def route_status(conn: sa.Connection, project_id: int, route: str, env: str) -> dict[str, Any]:
    """What serves ``route`` in ``env`` now: stable release, rollout (with its latest
    analysis) and the route's recent rollouts."""
    current = store.get_route(conn, project_id, route, env)
    if current is None:
        raise store.NotFoundError(f"route {route!r} has no release in {env}")
    active = rollouts.active_rollout(conn, project_id, route, env)
    recent = rollouts.list_rollouts(conn, project_id, route, limit=10)
    return {
        "route": route,
        "environment": env,
        "stable_release_id": current.release_id,
        "updated_by": current.updated_by,
        "updated_at": current.updated_at.isoformat(),
        "rollout": active.to_dict() if active is not None else None,
        "recent_rollouts": [r.to_dict() for r in recent if r.environment == env][:5],
    }


def route_list(conn: sa.Connection, project_id: int) -> list[dict[str, Any]]:
    """Every route and environment with its stable release and rollout in progress."""
    out = []
    for r in store.list_routes(conn, project_id):
        active = rollouts.active_rollout(conn, project_id, r.route, r.environment)
        out.append(
            {
                "route": r.route,
                "environment": r.environment,
                "stable_release_id": r.release_id,
                "rollout": active.to_dict() if active else None,
            }
        )
    return out
