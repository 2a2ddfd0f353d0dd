"""Releases, routes and their history in the database (SQLite and PostgreSQL alike).

Writes run inside :func:`bastion.store.transactions.run_write` (``BEGIN IMMEDIATE`` on SQLite);
on PostgreSQL the route row is locked with ``SELECT … FOR UPDATE`` before it is read, so two
concurrent deploys or rollout changes of one route serialise. Every change of what a route
serves appends one ``release_events`` row saying what serves after it (stable release, and the
candidate with its weight), which makes "what was serving at time T" one indexed lookup.
Given an :class:`~bastion.audit.AuditTrail` (``audit=``), each change also appends its audit
record in the same transaction (:mod:`bastion.releases.audit_events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.prompts.registry_queries import select_version
from bastion.releases.audit_events import (
    RouteChange,
    record_release_created,
    record_route_change,
    serving_before,
)
from bastion.releases.model import ENVIRONMENTS, ReleaseSpec, ReleaseSpecError, check_name
from bastion.store.schema import (
    prompt_versions,
    release_events,
    release_rollouts,
    release_routes,
    releases,
)

ACTIVE_STATES = ("running", "paused")

__all__ = [
    "ACTIVE_STATES",
    "ConflictError",
    "Event",
    "NotFoundError",
    "ReleaseError",
    "ReleaseInfo",
    "RouteState",
    "active_on_route",
    "aware",
    "check_route",
    "create_release",
    "deploy",
    "get_release",
    "get_route",
    "history",
    "list_releases",
    "list_routes",
    "lock_route",
    "now_utc",
    "record_event",
    "serving_at",
]


class ReleaseError(Exception):
    """A release operation that cannot be done; ``status`` is the HTTP status it maps to."""

    status = 400


class NotFoundError(ReleaseError):
    status = 404


class ConflictError(ReleaseError):
    status = 409


def now_utc() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """A stored release: its id, content and who created it when."""

    release_id: str
    name: str
    content_hash: str
    spec: ReleaseSpec
    created_by: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "name": self.name,
            "content_hash": self.content_hash,
            "spec": self.spec.to_dict(),
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a route's history."""

    id: int
    route: str
    environment: str
    action: str
    rollout_id: str | None
    stable_release_id: str | None
    candidate_release_id: str | None
    strategy: str | None
    weight: float
    step: int | None
    reason: str | None
    actor: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "environment": self.environment,
            "action": self.action,
            "rollout_id": self.rollout_id,
            "stable_release_id": self.stable_release_id,
            "candidate_release_id": self.candidate_release_id,
            "strategy": self.strategy,
            "weight": self.weight,
            "step": self.step,
            "reason": self.reason,
            "actor": self.actor,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class RouteState:
    route: str
    environment: str
    release_id: str
    updated_by: str
    updated_at: datetime


def _info(row: Any) -> ReleaseInfo:
    return ReleaseInfo(
        release_id=row.release_id,
        name=row.name,
        content_hash=row.content_hash,
        spec=ReleaseSpec.from_json(row.spec),
        created_by=row.created_by,
        created_at=aware(row.created_at),
    )


def _check_prompts(conn: sa.Connection, project_id: int, spec: ReleaseSpec) -> None:
    """Every prompt version a release pins must exist: a release is deployable as stored."""
    for name, version in spec.prompts.items():
        found = conn.execute(
            select_version(
                prompt_versions.c.version, project_id=project_id, name=name, version=version
            )
        ).first()
        if found is None:
            raise NotFoundError(
                f"prompts.{name}: the registry has no version {version} of prompt {name!r} "
                "(push it first: bastion prompts push)"
            )


def create_release(
    conn: sa.Connection,
    project_id: int,
    spec: ReleaseSpec,
    *,
    actor: str,
    audit: AuditTrail | None = None,
) -> tuple[ReleaseInfo, bool]:
    """Store ``spec`` unless a release with its content exists; ``(release, created)``."""
    _check_prompts(conn, project_id, spec)
    release_id = spec.release_id()
    existing = conn.execute(
        sa.select(releases).where(
            releases.c.project_id == project_id, releases.c.release_id == release_id
        )
    ).first()
    if existing is not None:
        return _info(existing), False
    info = ReleaseInfo(
        release_id=release_id,
        name=spec.name,
        content_hash=spec.content_hash(),
        spec=spec,
        created_by=actor[:200],
        created_at=now_utc(),
    )
    conn.execute(
        releases.insert().values(
            project_id=project_id,
            release_id=info.release_id,
            name=info.name,
            content_hash=info.content_hash,
            spec=spec.canonical_json().decode(),
            created_by=info.created_by,
            created_at=info.created_at,
        )
    )
    if audit is not None:
        record_release_created(
            conn, audit, project_id, info.release_id, info.name, info.content_hash
        )
    return info, True


def get_release(conn: sa.Connection, project_id: int, ref: str) -> ReleaseInfo:
    """A release by id, unique id prefix (≥ 4 characters) or name (its newest release)."""
    if not ref:
        raise ReleaseError("a release reference must not be empty")
    base = sa.select(releases).where(releases.c.project_id == project_id)
    row = conn.execute(base.where(releases.c.release_id == ref)).first()
    if row is not None:
        return _info(row)
    if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
        rows = conn.execute(base.where(releases.c.release_id.startswith(ref)).limit(2)).all()
        if len(rows) == 2:
            raise ReleaseError(f"release id prefix {ref!r} is ambiguous: give more digits")
        if rows:
            return _info(rows[0])
    row = conn.execute(
        base.where(releases.c.name == ref)
        .order_by(releases.c.created_at.desc(), releases.c.release_id)
        .limit(1)
    ).first()
    if row is None:
        raise NotFoundError(f"no release {ref!r} in this project (by id, id prefix or name)")
    return _info(row)


def list_releases(conn: sa.Connection, project_id: int, *, limit: int = 200) -> list[ReleaseInfo]:
    rows = conn.execute(
        sa.select(releases)
        .where(releases.c.project_id == project_id)
        .order_by(releases.c.created_at.desc(), releases.c.release_id)
        .limit(limit)
    ).all()
    return [_info(r) for r in rows]


# -- routes and history ------------------------------------------------------------------------


def check_route(route: str, environment: str) -> None:
    """A valid route name in one of the known environments, or a :class:`ReleaseError`."""
    try:
        check_name(route, "route")
    except ReleaseSpecError as exc:
        raise ReleaseError(str(exc)) from exc
    if environment not in ENVIRONMENTS:
        raise ReleaseError(
            f"environment must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}"
        )


def _route_state(row: Any) -> RouteState:
    return RouteState(
        row.route, row.environment, row.release_id, row.updated_by, aware(row.updated_at)
    )


def _fetch_route(
    conn: sa.Connection, project_id: int, route: str, environment: str, *, lock: bool
) -> RouteState | None:
    query = sa.select(release_routes).where(
        release_routes.c.project_id == project_id,
        release_routes.c.route == route,
        release_routes.c.environment == environment,
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _route_state(row) if row is not None else None


def lock_route(
    conn: sa.Connection, project_id: int, route: str, environment: str
) -> RouteState | None:
    """The route's stable release, row-locked on PostgreSQL until the transaction ends."""
    return _fetch_route(conn, project_id, route, environment, lock=True)


def get_route(
    conn: sa.Connection, project_id: int, route: str, environment: str
) -> RouteState | None:
    """The route's stable release, read without a lock (status reads do not block deploys)."""
    return _fetch_route(conn, project_id, route, environment, lock=False)


def list_routes(conn: sa.Connection, project_id: int) -> list[RouteState]:
    rows = conn.execute(
        sa.select(release_routes)
        .where(release_routes.c.project_id == project_id)
        .order_by(release_routes.c.route, release_routes.c.environment)
    ).all()
    return [_route_state(r) for r in rows]


def record_event(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    action: str,
    *,
    actor: str,
    stable: str | None,
    candidate: str | None = None,
    weight: float = 0.0,
    rollout_id: str | None = None,
    strategy: str | None = None,
    step: int | None = None,
    reason: str | None = None,
    at: datetime | None = None,
    audit: AuditTrail | None = None,
) -> None:
    """Append one history entry saying what serves the route after ``action`` (and its audit
    record, given ``audit``)."""
    before = None if audit is None else serving_before(conn, project_id, route, environment)
    conn.execute(
        release_events.insert().values(
            project_id=project_id,
            route=route,
            environment=environment,
            action=action,
            rollout_id=rollout_id,
            stable_release_id=stable,
            candidate_release_id=candidate,
            strategy=strategy,
            weight=weight,
            step=step,
            reason=reason,
            actor=actor[:200],
            at=at or now_utc(),
        )
    )
    if audit is not None:
        change = RouteChange(
            project_id, route, environment, action, stable, candidate, weight, rollout_id,
            strategy, step, reason,
        )  # fmt: skip
        record_route_change(conn, audit, change, before)


def set_stable(
    conn: sa.Connection, project_id: int, route: str, environment: str, release_id: str, actor: str
) -> None:
    """Point the route at ``release_id`` (insert or update); the caller records the event."""
    now = now_utc()
    updated = conn.execute(
        release_routes.update()
        .where(
            release_routes.c.project_id == project_id,
            release_routes.c.route == route,
            release_routes.c.environment == environment,
        )
        .values(release_id=release_id, updated_by=actor[:200], updated_at=now)
    )
    if updated.rowcount == 0:
        conn.execute(
            release_routes.insert().values(
                project_id=project_id,
                route=route,
                environment=environment,
                release_id=release_id,
                updated_by=actor[:200],
                updated_at=now,
            )
        )


def deploy(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str,
    release_ref: str,
    *,
    actor: str,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> ReleaseInfo:
    """Make a release the route's stable release at once (no rollout)."""
    check_route(route, environment)
    release = get_release(conn, project_id, release_ref)
    current = lock_route(conn, project_id, route, environment)
    if has_active_rollout(conn, project_id, route, environment):
        raise ConflictError(
            f"route {route!r} in {environment} has a rollout in progress: promote, abort or "
            "roll it back first"
        )
    if current is not None and current.release_id == release.release_id:
        return release
    set_stable(conn, project_id, route, environment, release.release_id, actor)
    record_event(
        conn,
        project_id,
        route,
        environment,
        "deploy",
        actor=actor,
        stable=release.release_id,
        reason=reason,
        audit=audit,
    )
    return release


def active_on_route(project_id: int, route: str, environment: str) -> sa.ColumnElement[bool]:
    """The condition on ``release_rollouts`` rows: the route's running or paused rollout."""
    return sa.and_(
        release_rollouts.c.project_id == project_id,
        release_rollouts.c.route == route,
        release_rollouts.c.environment == environment,
        release_rollouts.c.state.in_(ACTIVE_STATES),
    )


def has_active_rollout(conn: sa.Connection, project_id: int, route: str, environment: str) -> bool:
    found = conn.execute(
        sa.select(release_rollouts.c.rollout_id).where(
            active_on_route(project_id, route, environment)
        )
    ).first()
    return found is not None


def _event(row: Any) -> Event:
    return Event(
        id=int(row.id),
        route=row.route,
        environment=row.environment,
        action=row.action,
        rollout_id=row.rollout_id,
        stable_release_id=row.stable_release_id,
        candidate_release_id=row.candidate_release_id,
        strategy=row.strategy,
        weight=float(row.weight),
        step=row.step,
        reason=row.reason,
        actor=row.actor,
        at=aware(row.at),
    )


def history(
    conn: sa.Connection,
    project_id: int,
    route: str,
    environment: str | None = None,
    *,
    limit: int = 500,
) -> list[Event]:
    """The route's events, oldest first (every environment unless one is given)."""
    query = sa.select(release_events).where(
        release_events.c.project_id == project_id, release_events.c.route == route
    )
    if environment is not None:
        query = query.where(release_events.c.environment == environment)
    rows = conn.execute(query.order_by(release_events.c.id.desc()).limit(limit)).all()
    return [_event(r) for r in reversed(rows)]


def serving_at(
    conn: sa.Connection, project_id: int, route: str, environment: str, at: datetime
) -> Event | None:
    """The last event at or before ``at``: what was serving the route then (None: nothing)."""
    row = conn.execute(
        sa.select(release_events)
        .where(
            release_events.c.project_id == project_id,
            release_events.c.route == route,
            release_events.c.environment == environment,
            release_events.c.at <= at,
        )
        .order_by(release_events.c.at.desc(), release_events.c.id.desc())
        .limit(1)
    ).first()
    return _event(row) if row is not None else None


def previous_stable(
    conn: sa.Connection, project_id: int, route: str, environment: str, current: str
) -> str | None:
    """The stable release before ``current`` became stable (for a rollback), or None."""
    rows = conn.execute(
        sa.select(release_events.c.stable_release_id)
        .where(
            release_events.c.project_id == project_id,
            release_events.c.route == route,
            release_events.c.environment == environment,
        )
        .order_by(release_events.c.id.desc())
    ).all()
    seen_current = False
    for (stable,) in rows:
        if stable == current:
            seen_current = True
        elif seen_current and stable is not None:
            return str(stable)
    return None


def dump(value: Any) -> str:
    return orjson.dumps(value).decode()
