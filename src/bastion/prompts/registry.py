"""The prompt registry: immutable versions, labels, their history, rollback and diff.

Every function takes a connection and the caller's project id and never reads another
project's rows. Functions that write (``push``, ``set_label``, ``rollback``, ``protect_label``)
expect to run inside :func:`run_write`, which opens the transaction with the right locking for
the database (``BEGIN IMMEDIATE`` on SQLite; ``SELECT … FOR UPDATE`` on the prompt rows on
PostgreSQL, taken by the functions themselves) and retries on a lost race, so concurrent
pushes never create duplicate or missing version numbers and concurrent label moves never lose
a move. Given an :class:`~bastion.audit.AuditTrail` (``audit=``; every API, CLI and
controller path passes one), each change also appends its audit record in the same
transaction (:mod:`bastion.prompts.registry_audit`).

A version is identified by its content: the spec's canonical JSON plus the versions of the
partials it includes, pinned at push time. Pushing content that a version already has creates
nothing and answers with that version ("unchanged").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from bastion import names
from bastion.audit import AuditTrail
from bastion.auth import Role
from bastion.prompts import PromptSpec, TemplateError, check_spec
from bastion.prompts.registry_audit import record_label_change, record_push
from bastion.prompts.registry_queries import (
    LATEST,
    MOVES,
    ConflictError,
    LabelChange,
    LabelEvent,
    LabelState,
    NotFoundError,
    PromptLog,
    PromptSummary,
    PromptVersion,
    ProtectedLabelError,
    PushResult,
    RegistryError,
    ResolvedPrompt,
    diff,
    get,
    latest_versions,
    list_prompts,
    list_versions,
    log,
    now_utc,
    resolve,
)
from bastion.prompts.template import find_includes
from bastion.prompts.template_budget import DEFAULT_LIMITS, TemplateLimits
from bastion.store.schema import prompt_label_events, prompt_labels, prompt_versions, prompts
from bastion.store.storable import storable_text
from bastion.store.transactions import run_write

__all__ = [
    "DEFAULT_LABEL",
    "LATEST",
    "ConflictError",
    "LabelChange",
    "LabelEvent",
    "LabelState",
    "NotFoundError",
    "PromptLog",
    "PromptSummary",
    "PromptVersion",
    "ProtectedLabelError",
    "PushResult",
    "RegistryError",
    "ResolvedPrompt",
    "content_hash",
    "diff",
    "get",
    "list_prompts",
    "list_versions",
    "log",
    "protect_label",
    "push",
    "rollback",
    "run_write",
    "set_label",
]

DEFAULT_LABEL = "production"


# -- transactions ------------------------------------------------------------------------------


def _insert_ignore(conn: sa.Connection, values: dict[str, Any]) -> None:
    """Insert a prompts row unless (project_id, name) exists (a concurrent push may create it)."""
    if conn.dialect.name == "postgresql":
        pg = pg_dialect.insert(prompts).values(**values)
        conn.execute(pg.on_conflict_do_nothing(index_elements=["project_id", "name"]))
    else:
        lite = sqlite_dialect.insert(prompts).values(**values)
        conn.execute(lite.on_conflict_do_nothing(index_elements=["project_id", "name"]))


def _lock_prompts(
    conn: sa.Connection, project_id: int, names: Iterable[str], *, create: Iterable[str] = ()
) -> dict[str, int]:
    """Ids of the named prompts (creating those in ``create``), row-locked on PostgreSQL.

    Rows are created and locked in name order so two pushes of overlapping sets cannot deadlock.
    """
    now = now_utc()
    for name in sorted(set(create)):
        _insert_ignore(conn, {"project_id": project_id, "name": name, "created_at": now})
    query = (
        sa.select(prompts.c.name, prompts.c.id)
        .where(prompts.c.project_id == project_id, prompts.c.name.in_(sorted(set(names))))
        .order_by(prompts.c.name)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {row.name: int(row.id) for row in conn.execute(query)}


def _locked_prompt_id(conn: sa.Connection, project_id: int, name: str) -> int:
    ids = _lock_prompts(conn, project_id, [name])
    if name not in ids:
        raise NotFoundError(f"no prompt {name!r} in this project")
    return ids[name]


# -- push --------------------------------------------------------------------------------------


def content_hash(spec: PromptSpec, pins: Mapping[str, int]) -> str:
    """A version's identity: the spec's own hash, or a hash over the spec and its partial pins."""
    if not pins:
        return spec.content_hash()
    pinned = orjson.dumps(dict(pins), option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(spec.canonical_json() + b"\n" + pinned).hexdigest()


def _push_order(includes: Mapping[str, Sequence[str]]) -> list[str]:
    """Pushed prompts with every partial before the prompts that include it."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise RegistryError(f"prompts include each other in a cycle: {cycle}")
        state[name] = "active"
        for included in includes[name]:
            if included in includes:
                visit(included, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in sorted(includes):
        visit(name, [])
    return order


def _check_partials_are_text(
    conn: sa.Connection,
    project_id: int,
    by_name: Mapping[str, PromptSpec],
    includes: Mapping[str, Sequence[str]],
    ids: Mapping[str, int],
    latest: Mapping[int, int],
) -> None:
    """Only ``text:`` prompts can be included (a messages prompt has no single text to insert)."""
    for name in sorted(includes):
        for partial in includes[name]:
            if partial in by_name:
                is_text = by_name[partial].text is not None
            else:
                raw = conn.execute(
                    sa.select(prompt_versions.c.spec).where(
                        prompt_versions.c.project_id == project_id,
                        prompt_versions.c.prompt_id == ids[partial],
                        prompt_versions.c.version == latest[ids[partial]],
                    )
                ).scalar_one()
                is_text = orjson.loads(raw).get("text") is not None
            if not is_text:
                raise RegistryError(
                    f"prompt {name!r} includes {partial!r}, which has messages, not text: "
                    "only text prompts can be included as partials"
                )


def push(
    conn: sa.Connection,
    project_id: int,
    specs: Sequence[PromptSpec],
    *,
    message: str,
    author: str,
    git_sha: str | None = None,
    limits: TemplateLimits = DEFAULT_LIMITS,
    audit: AuditTrail | None = None,
) -> list[PushResult]:
    """Store ``specs`` as new versions where their content is new; all or nothing.

    Every partial a spec includes must be a prompt in the registry or in this push; it is
    pinned to its newest version after this push. Results come in the order of ``specs``.
    Templates are checked against ``limits`` as far as their source shows (nesting, constant
    sizes).
    """
    by_name = _specs_by_name(specs)
    includes = {name: tuple(dict.fromkeys(find_includes(spec))) for name, spec in by_name.items()}
    order = _push_order(includes)
    outside = {inc for incs in includes.values() for inc in incs} - set(by_name)
    ids = _lock_prompts(conn, project_id, set(by_name) | outside, create=by_name)
    known = set(by_name) | (outside & set(ids))
    _check_specs(by_name, includes, known, limits)

    latest = latest_versions(conn, project_id, ids.values())
    _check_partials_are_text(conn, project_id, by_name, includes, ids, latest)
    now = now_utc()
    results: dict[str, PushResult] = {}
    for name in order:
        pins = {inc: latest[ids[inc]] for inc in sorted(includes[name])}
        new_version = _NewVersion(
            message=message, author=author, git_sha=git_sha, pins=pins, created_at=now
        )
        results[name] = _store_version(
            conn, project_id, ids[name], by_name[name], new_version, latest
        )
    if audit is not None:
        for name in order:
            record_push(conn, audit, project_id, results[name])
    return [results[spec.name] for spec in specs]


def _specs_by_name(specs: Sequence[PromptSpec]) -> dict[str, PromptSpec]:
    if not specs:
        raise RegistryError("nothing to push: no prompts given")
    by_name: dict[str, PromptSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise RegistryError(f"prompt {spec.name!r} is given more than once in this push")
        by_name[spec.name] = spec
    return by_name


def _check_specs(
    by_name: dict[str, PromptSpec],
    includes: dict[str, tuple[str, ...]],
    known: set[str],
    limits: TemplateLimits,
) -> None:
    """Every include must resolve and every template must pass ``limits``, in name order."""
    for name in sorted(by_name):
        missing = [inc for inc in includes[name] if inc not in known]
        if missing:
            raise RegistryError(
                f"prompt {name!r} includes {missing[0]!r}, which is neither in the registry "
                "nor in this push"
            )
        try:
            check_spec(by_name[name], known_partials=tuple(sorted(known)), limits=limits)
        except TemplateError as exc:
            raise RegistryError(f"prompt {name!r}: {exc}") from exc


@dataclass(frozen=True)
class _NewVersion:
    """What a pushed version records besides its spec."""

    message: str
    author: str
    git_sha: str | None
    pins: dict[str, int]
    created_at: datetime


def _store_version(
    conn: sa.Connection,
    project_id: int,
    prompt_id: int,
    spec: PromptSpec,
    new: _NewVersion,
    latest: dict[int, int],
) -> PushResult:
    """Insert ``spec`` as the prompt's next version unless that content is already stored.

    ``latest`` is advanced so later prompts in the push pin the version just written.
    """
    digest = content_hash(spec, new.pins)
    previous = latest.get(prompt_id)
    existing = conn.execute(
        sa.select(prompt_versions.c.version).where(
            prompt_versions.c.project_id == project_id,
            prompt_versions.c.prompt_id == prompt_id,
            prompt_versions.c.content_hash == digest,
        )
    ).scalar()
    if existing is not None:
        return PushResult(
            name=spec.name,
            version=int(existing),
            status="unchanged",
            content_hash=digest,
            previous_version=previous,
        )
    version = (previous or 0) + 1
    conn.execute(
        prompt_versions.insert().values(
            project_id=project_id,
            prompt_id=prompt_id,
            version=version,
            content_hash=digest,
            spec=spec.canonical_json().decode(),
            message=storable_text(new.message),
            author=storable_text(new.author, 200),
            git_sha=new.git_sha,
            partials=orjson.dumps(new.pins, option=orjson.OPT_SORT_KEYS).decode(),
            created_at=new.created_at,
        )
    )
    latest[prompt_id] = version
    return PushResult(
        name=spec.name,
        version=version,
        status="created" if previous is None else "updated",
        content_hash=digest,
        previous_version=previous,
    )


# -- labels ------------------------------------------------------------------------------------


def _check_label(label: str) -> None:
    if label == LATEST:
        raise RegistryError(f"label {LATEST!r} is reserved: it always means the newest version")
    if not names.LABEL.is_valid(label):
        raise RegistryError(f"invalid label {label!r}: use {names.LABEL.rule}")


def _label_row(conn: sa.Connection, project_id: int, prompt_id: int, label: str) -> Any:
    return conn.execute(
        sa.select(prompt_labels).where(
            prompt_labels.c.project_id == project_id,
            prompt_labels.c.prompt_id == prompt_id,
            prompt_labels.c.label == label,
        )
    ).one_or_none()


def _move(
    conn: sa.Connection,
    project_id: int,
    prompt_id: int,
    label: str,
    *,
    current: Any,
    to_version: int,
    action: str,
    actor: str,
    reason: str | None,
    protected: bool | None = None,
) -> None:
    now = now_utc()
    values: dict[str, Any] = {
        "version": to_version,
        "updated_at": now,
        "updated_by": storable_text(actor, 200),
    }
    if protected is not None:
        values["protected"] = protected
    if current is None:
        conn.execute(
            prompt_labels.insert().values(
                project_id=project_id,
                prompt_id=prompt_id,
                label=label,
                **{"protected": False, **values},
            )
        )
    else:
        conn.execute(
            prompt_labels.update()
            .where(
                prompt_labels.c.project_id == project_id,
                prompt_labels.c.prompt_id == prompt_id,
                prompt_labels.c.label == label,
            )
            .values(**values)
        )
    conn.execute(
        prompt_label_events.insert().values(
            project_id=project_id,
            prompt_id=prompt_id,
            label=label,
            action=action,
            from_version=None if current is None else current.version,
            to_version=to_version,
            actor=storable_text(actor, 200),
            reason=None if reason is None else storable_text(reason),
            at=now,
        )
    )


def _require_unprotected(current: Any, name: str, label: str, role: Role | str) -> None:
    if current is not None and current.protected and Role(role) is not Role.ADMIN:
        raise ProtectedLabelError(
            f"label {label!r} of prompt {name!r} is protected: moving it needs an admin key"
        )


def set_label(
    conn: sa.Connection,
    project_id: int,
    name: str,
    version: int,
    label: str,
    *,
    actor: str,
    reason: str | None = None,
    role: Role | str,
    audit: AuditTrail | None = None,
) -> LabelChange:
    """Point ``label`` at ``version`` (a deploy), recording the move in the label history."""
    _check_label(label)
    prompt_id = _locked_prompt_id(conn, project_id, name)
    resolve(conn, project_id, prompt_id, name, version=version)
    current = _label_row(conn, project_id, prompt_id, label)
    _require_unprotected(current, name, label, role)
    before = None if current is None else int(current.version)
    protected = bool(current is not None and current.protected)
    if before == version:
        return LabelChange(
            name=name,
            label=label,
            from_version=before,
            to_version=version,
            changed=False,
            protected=protected,
        )
    _move(
        conn,
        project_id,
        prompt_id,
        label,
        current=current,
        to_version=version,
        action="set",
        actor=actor,
        reason=reason,
    )
    change = LabelChange(
        name=name,
        label=label,
        from_version=before,
        to_version=version,
        changed=True,
        protected=protected,
    )
    if audit is not None:
        record_label_change(conn, audit, project_id, change, "set", reason)
    return change


def rollback(
    conn: sa.Connection,
    project_id: int,
    name: str,
    label: str,
    *,
    actor: str,
    reason: str | None = None,
    role: Role | str,
    audit: AuditTrail | None = None,
) -> LabelChange:
    """Move ``label`` back to the version it pointed at before its last move.

    A rollback is itself a move, so rolling back twice returns to where the label started.
    """
    prompt_id = _locked_prompt_id(conn, project_id, name)
    current = _label_row(conn, project_id, prompt_id, label)
    if current is None:
        raise NotFoundError(f"prompt {name!r} has no label {label!r}")
    _require_unprotected(current, name, label, role)
    last = conn.execute(
        sa.select(prompt_label_events.c.from_version)
        .where(
            prompt_label_events.c.project_id == project_id,
            prompt_label_events.c.prompt_id == prompt_id,
            prompt_label_events.c.label == label,
            prompt_label_events.c.action.in_(MOVES),
        )
        .order_by(prompt_label_events.c.id.desc())
        .limit(1)
    ).one_or_none()
    if last is None or last.from_version is None:
        raise ConflictError(
            f"label {label!r} of prompt {name!r} has no previous version to roll back to "
            f"(it was first set to version {current.version} and has not moved since)"
        )
    target = int(last.from_version)
    _move(
        conn,
        project_id,
        prompt_id,
        label,
        current=current,
        to_version=target,
        action="rollback",
        actor=actor,
        reason=reason,
    )
    change = LabelChange(
        name=name,
        label=label,
        from_version=int(current.version),
        to_version=target,
        changed=True,
        protected=bool(current.protected),
    )
    if audit is not None:
        record_label_change(conn, audit, project_id, change, "rollback", reason)
    return change


def protect_label(
    conn: sa.Connection,
    project_id: int,
    name: str,
    label: str,
    *,
    actor: str,
    role: Role | str,
    protected: bool = True,
    reason: str | None = None,
    audit: AuditTrail | None = None,
) -> LabelChange:
    """Protect (or unprotect) an existing label: only admin keys may then move it."""
    if Role(role) is not Role.ADMIN:
        raise ProtectedLabelError("protecting or unprotecting a label needs an admin key")
    prompt_id = _locked_prompt_id(conn, project_id, name)
    current = _label_row(conn, project_id, prompt_id, label)
    if current is None:
        raise NotFoundError(f"prompt {name!r} has no label {label!r}: set it before protecting it")
    version = int(current.version)
    change = LabelChange(
        name=name,
        label=label,
        from_version=version,
        to_version=version,
        changed=bool(current.protected) != protected,
        protected=protected,
    )
    if change.changed:
        _move(
            conn,
            project_id,
            prompt_id,
            label,
            current=current,
            to_version=version,
            action="protect" if protected else "unprotect",
            actor=actor,
            reason=reason,
            protected=protected,
        )
        if audit is not None:
            action = "protect" if protected else "unprotect"
            record_label_change(conn, audit, project_id, change, action, reason)
    return change
