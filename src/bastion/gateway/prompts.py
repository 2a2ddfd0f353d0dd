"""The gateway's in-memory copy of the prompt registry: named prompts served without the database.

A request that names a prompt (``bastion.gateway.prompt_requests``) is resolved here from
memory. At startup every project's prompts, labels and newest versions are loaded, and every
version of each prompt that has a label (so an explicit ``version`` of a deployed prompt, or a
rollback, is already in memory), with the partials they pin. A background task then polls a
cheap change marker every ``gateway.prompt_refresh_s`` (1 s) on a worker thread: per project,
the number of prompt versions and the newest label event id. Versions are immutable and
numbered 1..N, so only a project whose marker moved is re-read, and only its names, labels and
the versions not yet in memory are fetched. A label move is therefore served within about a
second of the ``PUT``.

Two cold paths touch the database, both on a worker thread, never on the event loop: a lookup
that misses (unknown name, label or a version newer than the newest known) triggers one
coalesced refresh, at most every ``miss_refresh_s``, before the 404 is given (so a prompt pushed
a moment ago is found); and an old version of a prompt that has no label, which is not held
in memory, is fetched once and then kept (versions never change).

State is replaced, never mutated: each project is an immutable :class:`_Project`, swapped on the
event loop when a refresh finishes, so worker threads read consistent snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson
import sqlalchemy as sa

from bastion.prompts import PromptSpec
from bastion.store.mirror import TableMirror
from bastion.store.schema import prompt_label_events, prompt_labels, prompt_versions, prompts

__all__ = ["CachedPrompt", "PromptCache", "PromptLookupError"]

log = logging.getLogger("bastion.gateway")

LATEST = "latest"
_CHUNK = 100  # prompts per version query

Key = tuple[str, int]  # (prompt name, version)


class PromptLookupError(Exception):
    """A prompt reference the cache cannot serve: ``status`` 404 (unknown) or 503 (not loaded)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class CachedPrompt:
    """One immutable prompt version, ready to render: its spec and its pinned partials."""

    name: str
    version: int
    content_hash: str
    spec: PromptSpec
    pins: Mapping[str, int]
    partials: Mapping[str, PromptSpec]


@dataclass(frozen=True, slots=True)
class _Project:
    marker: tuple[int, int]
    ids: Mapping[str, int]
    labels: Mapping[str, Mapping[str, int]]
    latest: Mapping[str, int]
    versions: Mapping[Key, CachedPrompt] = field(default_factory=dict)


@dataclass(slots=True)
class _Row:
    content_hash: str
    spec: PromptSpec
    pins: dict[str, int]


def _markers(conn: sa.Connection) -> dict[int, tuple[int, int]]:
    """Per project: (number of prompt versions, newest label event id). Both only grow."""
    counts = conn.execute(
        sa.select(prompt_versions.c.project_id, sa.func.count()).group_by(
            prompt_versions.c.project_id
        )
    ).all()
    events = conn.execute(
        sa.select(prompt_label_events.c.project_id, sa.func.max(prompt_label_events.c.id)).group_by(
            prompt_label_events.c.project_id
        )
    ).all()
    out: dict[int, tuple[int, int]] = {int(pid): (int(n), 0) for pid, n in counts}
    for pid, newest in events:
        out[int(pid)] = (out.get(int(pid), (0, 0))[0], int(newest or 0))
    return out


def _fetch_rows(
    conn: sa.Connection, project_id: int, ids: Mapping[str, int], wanted: Mapping[str, set[int]]
) -> dict[Key, _Row]:
    """The named versions' specs and pins, ``_CHUNK`` prompts per query."""
    names = {pid: name for name, pid in ids.items()}
    items = sorted((name, sorted(versions)) for name, versions in wanted.items() if versions)
    out: dict[Key, _Row] = {}
    for start in range(0, len(items), _CHUNK):
        clauses = [
            sa.and_(prompt_versions.c.prompt_id == ids[name], prompt_versions.c.version.in_(vs))
            for name, vs in items[start : start + _CHUNK]
        ]
        rows = conn.execute(
            sa.select(
                prompt_versions.c.prompt_id,
                prompt_versions.c.version,
                prompt_versions.c.content_hash,
                prompt_versions.c.spec,
                prompt_versions.c.partials,
            ).where(prompt_versions.c.project_id == project_id, sa.or_(*clauses))
        )
        for row in rows:
            spec = PromptSpec.from_dict(orjson.loads(row.spec))
            pins = {str(k): int(v) for k, v in orjson.loads(row.partials).items()}
            out[(names[row.prompt_id], int(row.version))] = _Row(row.content_hash, spec, pins)
    return out


def _complete(
    conn: sa.Connection,
    project_id: int,
    ids: Mapping[str, int],
    known: Mapping[Key, CachedPrompt],
    required: Iterable[Key],
) -> dict[Key, CachedPrompt]:
    """Fetch the ``required`` versions not in ``known``, and the partials they pin, transitively."""
    rows: dict[Key, _Row] = {}
    todo = {key for key in required if key not in known}
    while todo:
        wanted: dict[str, set[int]] = {}
        for name, version in todo:
            if name in ids:
                wanted.setdefault(name, set()).add(version)
        fetched = _fetch_rows(conn, project_id, ids, wanted)
        rows.update(fetched)
        todo = {
            pin
            for row in fetched.values()
            for pin in row.pins.items()
            if pin not in known and pin not in rows
        }
    out: dict[Key, CachedPrompt] = {}
    for (name, version), row in rows.items():
        partials: dict[str, PromptSpec] = {}
        queue = list(row.pins.items())
        while queue:  # nearest pin wins, as in the registry's own resolution
            pname, pversion = queue.pop(0)
            if pname in partials:
                continue
            found = rows.get((pname, pversion))
            cached = known.get((pname, pversion))
            if found is not None:
                partials[pname] = found.spec
                queue.extend(found.pins.items())
            elif cached is not None:
                partials[pname] = cached.spec
                queue.extend(cached.pins.items())
        out[(name, version)] = CachedPrompt(
            name, version, row.content_hash, row.spec, row.pins, partials
        )
    return out


def _load_project(
    conn: sa.Connection, project_id: int, marker: tuple[int, int], old: _Project | None
) -> _Project:
    """Names, labels, newest versions; every version of labelled prompts; newest of the rest."""
    ids = {
        str(name): int(pid)
        for pid, name in conn.execute(
            sa.select(prompts.c.id, prompts.c.name).where(prompts.c.project_id == project_id)
        )
    }
    names = {pid: name for name, pid in ids.items()}
    labels: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        sa.select(prompt_labels.c.prompt_id, prompt_labels.c.label, prompt_labels.c.version).where(
            prompt_labels.c.project_id == project_id
        )
    ):
        labels.setdefault(names[row.prompt_id], {})[row.label] = int(row.version)
    latest = {
        names[int(pid)]: int(newest)
        for pid, newest in conn.execute(
            sa.select(prompt_versions.c.prompt_id, sa.func.max(prompt_versions.c.version))
            .where(prompt_versions.c.project_id == project_id)
            .group_by(prompt_versions.c.prompt_id)
        )
    }
    known = old.versions if old is not None else {}
    required: set[Key] = set(latest.items())  # the newest version of every prompt
    for name in labels:
        required.update((name, v) for v in range(1, latest.get(name, 0) + 1))
    added = _complete(conn, project_id, ids, known, required)
    return _Project(marker, ids, labels, latest, {**known, **added} if added else known)


class PromptCache:
    """Every project's deployable prompt versions, in memory; refreshed off the event loop (a
    :class:`TableMirror` of the prompt tables)."""

    def __init__(
        self, engine: sa.Engine, *, refresh_s: float = 1.0, miss_refresh_s: float = 0.5
    ) -> None:
        self.engine = engine
        # Replaced, never mutated: a worker thread reading it sees one consistent snapshot.
        self._projects: Mapping[int, _Project] = {}
        self.mirror = TableMirror(
            engine,
            marker=_markers,
            load=self._load_changed,
            apply=self._apply,
            what="prompts",
            log=log,
            refresh_s=refresh_s,
            miss_refresh_s=miss_refresh_s,
        )
        self.work = self.mirror.work  # drained at shutdown, before the engine is disposed

    # -- refreshing (database work on worker threads) -----------------------------------------

    def _load_changed(
        self, conn: sa.Connection, markers: Mapping[int, tuple[int, int]]
    ) -> dict[int, _Project]:
        """The projects whose marker moved, re-read (on the worker thread)."""
        snapshot = self._projects
        changed: dict[int, _Project] = {}
        for project_id, marker in markers.items():
            old = snapshot.get(project_id)
            if old is None or old.marker != marker:
                changed[project_id] = _load_project(conn, project_id, marker, old)
        return changed

    def _apply(self, changed: Mapping[int, _Project]) -> None:
        self._projects = {**self._projects, **changed}

    @property
    def loaded(self) -> bool:
        """True once a load has succeeded."""
        return self.mirror.loaded

    async def refresh(self) -> None:
        """Reload what changed since the last refresh; concurrent callers share one reload."""
        await self.mirror.refresh()

    async def run(self) -> None:
        """Poll the change marker every ``refresh_s`` until cancelled; failures keep the cache."""
        await self.mirror.run()

    # -- lookups (memory; the database only on the cold paths described above) -----------------

    def _locate(
        self, project_id: int, name: str, label: str | None, version: int | None
    ) -> int | str:
        """The version number, or the reason there is none."""
        project = self._projects.get(project_id)
        newest = project.latest.get(name) if project is not None else None
        if project is None or newest is None:
            return f"no prompt {name!r} in this project"
        if version is not None:
            if not 1 <= version <= newest:
                return f"prompt {name!r} has no version {version} (newest is {newest})"
            return version
        if label is None or label == LATEST:
            return newest
        found = project.labels.get(name, {}).get(label)
        if found is None:
            have = ", ".join(sorted(project.labels.get(name, {}))) or "none"
            return f"prompt {name!r} has no label {label!r} (labels: {have})"
        return found

    async def get(
        self, project_id: int, name: str, *, label: str | None = None, version: int | None = None
    ) -> CachedPrompt:
        """The version ``label`` (or ``version``, or ``latest``) of prompt ``name``."""
        found = self._locate(project_id, name, label, version)
        if isinstance(found, str) or not self.loaded:
            await self.mirror.refresh_on_miss()
            found = self._locate(project_id, name, label, version)
        if not self.loaded:
            raise PromptLookupError(503, "the prompt registry is not loaded yet; retry shortly")
        if isinstance(found, str):
            raise PromptLookupError(404, found)
        project = self._projects[project_id]
        cached = project.versions.get((name, found))
        if cached is None:
            cached = await self._fetch_cold(project_id, name, found)
        return cached

    async def _fetch_cold(self, project_id: int, name: str, version: int) -> CachedPrompt:
        """A version that is not held in memory (an old version of an unlabelled prompt)."""
        project = self._projects[project_id]

        def fetch() -> dict[Key, CachedPrompt]:
            with self.engine.connect() as conn:
                return _complete(conn, project_id, project.ids, project.versions, [(name, version)])

        try:
            added = await self.work.run(fetch)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise PromptLookupError(
                503, f"prompt {name!r} version {version} could not be loaded: {exc}"
            ) from exc
        if (name, version) not in added:
            raise PromptLookupError(404, f"prompt {name!r} has no version {version}")
        current = self._projects.get(project_id, project)
        updated = _Project(
            current.marker,
            current.ids,
            current.labels,
            current.latest,
            {**current.versions, **added},
        )
        self._projects = {**self._projects, project_id: updated}
        return added[(name, version)]

    def stats(self) -> dict[str, int]:
        """Projects, prompts and versions held (for logs and tests)."""
        return {
            "projects": len(self._projects),
            "prompts": sum(len(p.ids) for p in self._projects.values()),
            "versions": sum(len(p.versions) for p in self._projects.values()),
        }
