"""The gateway's in-memory route table: which release serves each route, with no database trip.

At startup every route's stable release and its running or paused rollout (with the candidate
release) are loaded. A task then polls one change marker every ``releases.refresh_s`` (1 s) on
a worker thread — the newest ``release_events`` id, since every deploy, step, promotion, pause
and rollback appends one — and reloads the table only when it moved. The new table replaces the
old one on the event loop, so a request sees one consistent snapshot; a rollback is therefore
served within about a second. A route a request names but the table lacks triggers one
coalesced reload (at most every ``miss_refresh_s``) before the 404, so a route deployed a moment
ago is found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from bastion.releases.model import ReleaseSpec
from bastion.releases.store import ACTIVE_STATES
from bastion.store.mirror import TableMirror
from bastion.store.schema import release_events, release_rollouts, release_routes, releases

__all__ = ["ActiveRollout", "RouteEntry", "RouteTable", "ServedRelease"]

log = logging.getLogger("bastion.releases")

Key = tuple[int, str, str]  # (project id, route, environment)


@dataclass(frozen=True, slots=True)
class ServedRelease:
    release_id: str
    spec: ReleaseSpec


@dataclass(frozen=True, slots=True)
class ActiveRollout:
    rollout_id: str
    strategy: str
    state: str
    step: int
    weight: float
    candidate: ServedRelease


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """What serves one route in one environment right now."""

    route: str
    environment: str
    stable: ServedRelease
    rollout: ActiveRollout | None


def _marker(conn: sa.Connection) -> int:
    """The newest ``release_events`` id: it moves on every change to what a route serves."""
    return int(
        conn.execute(sa.select(sa.func.coalesce(sa.func.max(release_events.c.id), 0))).scalar_one()
    )


def _load(conn: sa.Connection, marker: int) -> dict[Key, RouteEntry]:
    routes = conn.execute(sa.select(release_routes)).all()
    rollouts = conn.execute(
        sa.select(release_rollouts).where(release_rollouts.c.state.in_(ACTIVE_STATES))
    ).all()
    wanted: set[tuple[int, str]] = {(int(r.project_id), r.release_id) for r in routes}
    wanted |= {(int(r.project_id), r.candidate_release_id) for r in rollouts}
    specs: dict[tuple[int, str], ServedRelease] = {}
    by_project: dict[int, list[str]] = {}
    for project_id, release_id in wanted:
        by_project.setdefault(project_id, []).append(release_id)
    for project_id, ids in by_project.items():
        for row in conn.execute(
            sa.select(releases.c.release_id, releases.c.spec).where(
                releases.c.project_id == project_id, releases.c.release_id.in_(ids)
            )
        ):
            specs[(project_id, row.release_id)] = ServedRelease(
                row.release_id, ReleaseSpec.from_json(row.spec)
            )
    active: dict[Key, ActiveRollout] = {}
    for r in rollouts:
        candidate = specs.get((int(r.project_id), r.candidate_release_id))
        if candidate is not None:
            active[(int(r.project_id), r.route, r.environment)] = ActiveRollout(
                r.rollout_id, r.strategy, r.state, int(r.step), float(r.weight), candidate
            )
    table: dict[Key, RouteEntry] = {}
    for r in routes:
        key = (int(r.project_id), r.route, r.environment)
        stable = specs.get((int(r.project_id), r.release_id))
        if stable is not None:
            table[key] = RouteEntry(r.route, r.environment, stable, active.get(key))
    return table


class RouteTable:
    """Every project's routes in memory; refreshed off the event loop (a :class:`TableMirror`
    of the release tables)."""

    def __init__(
        self, engine: sa.Engine, *, refresh_s: float = 1.0, miss_refresh_s: float = 0.5
    ) -> None:
        self._table: Mapping[Key, RouteEntry] = {}
        self.mirror = TableMirror(
            engine,
            marker=_marker,
            load=_load,
            apply=self._swap,
            what="release routes",
            log=log,
            refresh_s=refresh_s,
            miss_refresh_s=miss_refresh_s,
        )
        self.work = self.mirror.work  # drained at shutdown, before the engine is disposed

    def _swap(self, table: dict[Key, RouteEntry]) -> None:
        self._table = table

    @property
    def loaded(self) -> bool:
        """True once a load has succeeded."""
        return self.mirror.loaded

    async def refresh(self) -> None:
        """Reload when the marker moved; concurrent callers share one reload."""
        await self.mirror.refresh()

    async def run(self) -> None:
        """Poll every ``refresh_s`` until cancelled; a failed poll keeps the current table."""
        await self.mirror.run()

    async def get(self, project_id: int, route: str, environment: str) -> RouteEntry | None:
        """The route's entry from memory (one coalesced reload first on a miss)."""
        entry = self._table.get((project_id, route, environment))
        if entry is not None and self.loaded:
            return entry
        await self.mirror.refresh_on_miss()
        return self._table.get((project_id, route, environment))

    def __len__(self) -> int:
        return len(self._table)
