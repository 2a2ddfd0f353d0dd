"""Reads of the prompt registry (prompts, versions, labels, history, diff), its result models
and its errors. Every function takes the caller's project id and reads only that project's rows.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field

from bastion.store.schema import prompt_label_events, prompt_labels, prompt_versions, prompts

__all__ = [
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
    "diff",
    "get",
    "list_prompts",
    "list_versions",
    "log",
    "select_version",
]

LATEST = "latest"  # a reserved label that always means the newest version
MOVES = ("set", "rollback")  # the label events that move a label

# -- errors ------------------------------------------------------------------------------------


class RegistryError(Exception):
    """A request the registry refuses; ``status`` and ``kind`` say how to report it over HTTP."""

    status = 400
    kind = "invalid_request"


class NotFoundError(RegistryError):
    status = 404
    kind = "not_found"


class ConflictError(RegistryError):
    status = 409
    kind = "conflict"


class ProtectedLabelError(RegistryError, PermissionError):
    status = 403
    kind = "permission_error"


# -- results -----------------------------------------------------------------------------------


class PushResult(BaseModel):
    name: str
    version: int
    status: Literal["created", "updated", "unchanged"]
    content_hash: str
    previous_version: int | None = Field(description="the newest version before this push")


class PromptVersion(BaseModel):
    name: str
    version: int
    content_hash: str
    message: str
    author: str
    git_sha: str | None
    partials: dict[str, int] = Field(description="included partials and their pinned versions")
    created_at: datetime
    labels: list[str]


class LabelEvent(BaseModel):
    label: str
    action: Literal["set", "rollback", "protect", "unprotect"]
    from_version: int | None
    to_version: int
    actor: str
    reason: str | None
    at: datetime


class LabelState(BaseModel):
    label: str
    version: int
    protected: bool
    updated_at: datetime
    updated_by: str


class LabelChange(BaseModel):
    name: str
    label: str
    from_version: int | None
    to_version: int
    changed: bool = Field(description="false when the label already pointed there")
    protected: bool


class PromptSummary(BaseModel):
    name: str
    latest_version: int
    description: str | None
    labels: dict[str, int]
    created_at: datetime
    updated_at: datetime


class PromptLog(BaseModel):
    name: str
    versions: list[PromptVersion] = Field(description="newest first")
    labels: list[LabelState]
    events: list[LabelEvent] = Field(description="label moves and protection changes, newest first")


class ResolvedPrompt(BaseModel):
    name: str
    version: int
    content_hash: str
    spec: dict[str, Any]
    partials: dict[str, dict[str, Any]] = Field(
        description="spec of every (transitively) included partial at its pinned version"
    )
    partial_versions: dict[str, int]
    labels: list[str]
    message: str
    author: str
    git_sha: str | None
    created_at: datetime


def now_utc() -> datetime:
    return datetime.now(UTC)


def prompt_id_of(conn: sa.Connection, project_id: int, name: str) -> int:
    found = conn.execute(
        sa.select(prompts.c.id).where(prompts.c.project_id == project_id, prompts.c.name == name)
    ).scalar()
    if found is None:
        raise NotFoundError(f"no prompt {name!r} in this project")
    return int(found)


def latest_versions(conn: sa.Connection, project_id: int, ids: Iterable[int]) -> dict[int, int]:
    query = (
        sa.select(prompt_versions.c.prompt_id, sa.func.max(prompt_versions.c.version))
        .where(
            prompt_versions.c.project_id == project_id,
            prompt_versions.c.prompt_id.in_(sorted(set(ids))),
        )
        .group_by(prompt_versions.c.prompt_id)
    )
    return {int(pid): int(v) for pid, v in conn.execute(query)}


# -- reads -------------------------------------------------------------------------------------


def labels_of(conn: sa.Connection, project_id: int, prompt_id: int) -> list[LabelState]:
    rows = conn.execute(
        sa.select(prompt_labels)
        .where(prompt_labels.c.project_id == project_id, prompt_labels.c.prompt_id == prompt_id)
        .order_by(prompt_labels.c.label)
    )
    return [
        LabelState(
            label=r.label,
            version=r.version,
            protected=bool(r.protected),
            updated_at=r.updated_at,
            updated_by=r.updated_by,
        )
        for r in rows
    ]


def resolve(
    conn: sa.Connection,
    project_id: int,
    prompt_id: int,
    name: str,
    *,
    label: str | None = None,
    version: int | None = None,
) -> int:
    """The version a label or version number names (the newest when neither is given)."""
    if label is not None and version is not None:
        raise RegistryError("ask for a label or a version, not both")
    latest = latest_versions(conn, project_id, [prompt_id]).get(prompt_id)
    if latest is None:
        raise NotFoundError(f"prompt {name!r} has no versions")
    if version is not None:
        if not 1 <= version <= latest:
            raise NotFoundError(f"prompt {name!r} has no version {version} (newest is {latest})")
        return version
    if label is None or label == LATEST:
        return latest
    found = conn.execute(
        sa.select(prompt_labels.c.version).where(
            prompt_labels.c.project_id == project_id,
            prompt_labels.c.prompt_id == prompt_id,
            prompt_labels.c.label == label,
        )
    ).scalar()
    if found is None:
        have = ", ".join(s.label for s in labels_of(conn, project_id, prompt_id)) or "none"
        raise NotFoundError(f"prompt {name!r} has no label {label!r} (labels: {have})")
    return int(found)


def _resolve_ref(
    conn: sa.Connection, project_id: int, prompt_id: int, name: str, ref: str | int
) -> int:
    """``3`` / ``"3"`` / ``"v3"`` is a version number; anything else a label."""
    text = str(ref)
    if text.isdigit() or (text[:1] == "v" and text[1:].isdigit()):
        return resolve(conn, project_id, prompt_id, name, version=int(text.lstrip("v")))
    return resolve(conn, project_id, prompt_id, name, label=text)


def _version_row(conn: sa.Connection, project_id: int, prompt_id: int, version: int) -> sa.Row[Any]:
    return conn.execute(
        sa.select(prompt_versions).where(
            prompt_versions.c.project_id == project_id,
            prompt_versions.c.prompt_id == prompt_id,
            prompt_versions.c.version == version,
        )
    ).one()


def _version_out(name: str, row: sa.Row[Any], labels: list[LabelState]) -> PromptVersion:
    return PromptVersion(
        name=name,
        version=row.version,
        content_hash=row.content_hash,
        message=row.message,
        author=row.author,
        git_sha=row.git_sha,
        partials=orjson.loads(row.partials),
        created_at=row.created_at,
        labels=[s.label for s in labels if s.version == row.version],
    )


def select_version(
    *columns: sa.ColumnElement[Any], project_id: int, name: str, version: int
) -> sa.Select[Any]:
    """A query for ``columns`` of version ``version`` of the project's prompt ``name``."""
    return (
        sa.select(*columns)
        .select_from(prompt_versions.join(prompts, prompts.c.id == prompt_versions.c.prompt_id))
        .where(
            prompts.c.project_id == project_id,
            prompts.c.name == name,
            prompt_versions.c.project_id == project_id,
            prompt_versions.c.version == version,
        )
    )


def _pinned_partials(
    conn: sa.Connection, project_id: int, pins: Mapping[str, int]
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Specs of the pinned partials and of the partials they include, at their pinned versions.

    When two paths pin the same partial differently, the pin nearest the prompt wins.
    """
    specs: dict[str, dict[str, Any]] = {}
    versions: dict[str, int] = {}
    queue = list(pins.items())
    while queue:
        name, version = queue.pop(0)
        if name in versions:
            continue
        row = conn.execute(
            select_version(
                prompt_versions.c.spec,
                prompt_versions.c.partials,
                project_id=project_id,
                name=name,
                version=version,
            )
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"pinned partial {name!r} version {version} is missing")
        specs[name] = orjson.loads(row.spec)
        versions[name] = version
        queue.extend(orjson.loads(row.partials).items())
    return specs, versions


def get(
    conn: sa.Connection,
    project_id: int,
    name: str,
    *,
    label: str | None = None,
    version: int | None = None,
) -> ResolvedPrompt:
    """One version with its pinned partials: by ``label``, by ``version``, or the newest."""
    prompt_id = prompt_id_of(conn, project_id, name)
    number = resolve(conn, project_id, prompt_id, name, label=label, version=version)
    row = _version_row(conn, project_id, prompt_id, number)
    partials, partial_versions = _pinned_partials(conn, project_id, orjson.loads(row.partials))
    labels = labels_of(conn, project_id, prompt_id)
    return ResolvedPrompt(
        name=name,
        version=number,
        content_hash=row.content_hash,
        spec=orjson.loads(row.spec),
        partials=partials,
        partial_versions=partial_versions,
        labels=[s.label for s in labels if s.version == number],
        message=row.message,
        author=row.author,
        git_sha=row.git_sha,
        created_at=row.created_at,
    )


def list_prompts(conn: sa.Connection, project_id: int) -> list[PromptSummary]:
    """The project's prompts by name, each with its newest version and its labels."""
    newest = (
        sa.select(
            prompt_versions.c.prompt_id, sa.func.max(prompt_versions.c.version).label("version")
        )
        .where(prompt_versions.c.project_id == project_id)
        .group_by(prompt_versions.c.prompt_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(
            prompts.c.id,
            prompts.c.name,
            prompts.c.created_at,
            prompt_versions.c.version,
            prompt_versions.c.spec,
            prompt_versions.c.created_at.label("updated_at"),
        )
        .join(newest, newest.c.prompt_id == prompts.c.id)
        .join(
            prompt_versions,
            sa.and_(
                prompt_versions.c.project_id == project_id,
                prompt_versions.c.prompt_id == newest.c.prompt_id,
                prompt_versions.c.version == newest.c.version,
            ),
        )
        .where(prompts.c.project_id == project_id)
        .order_by(prompts.c.name)
    ).all()
    labels: dict[int, dict[str, int]] = {}
    for lrow in conn.execute(
        sa.select(prompt_labels.c.prompt_id, prompt_labels.c.label, prompt_labels.c.version)
        .where(prompt_labels.c.project_id == project_id)
        .order_by(prompt_labels.c.label)
    ):
        labels.setdefault(lrow.prompt_id, {})[lrow.label] = lrow.version
    out = []
    for row in rows:
        description = orjson.loads(row.spec).get("description")
        out.append(
            PromptSummary(
                name=row.name,
                latest_version=row.version,
                description=description if isinstance(description, str) else None,
                labels=labels.get(row.id, {}),
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
        )
    return out


def list_versions(conn: sa.Connection, project_id: int, name: str) -> list[PromptVersion]:
    """Every version of prompt ``name``, newest first."""
    prompt_id = prompt_id_of(conn, project_id, name)
    labels = labels_of(conn, project_id, prompt_id)
    rows = conn.execute(
        sa.select(prompt_versions)
        .where(prompt_versions.c.project_id == project_id, prompt_versions.c.prompt_id == prompt_id)
        .order_by(prompt_versions.c.version.desc())
    )
    return [_version_out(name, row, labels) for row in rows]


def _events(
    conn: sa.Connection, project_id: int, prompt_id: int, label: str | None = None
) -> list[LabelEvent]:
    query = (
        sa.select(prompt_label_events)
        .where(
            prompt_label_events.c.project_id == project_id,
            prompt_label_events.c.prompt_id == prompt_id,
        )
        .order_by(prompt_label_events.c.id.desc())
    )
    if label is not None:
        query = query.where(prompt_label_events.c.label == label)
    return [
        LabelEvent(
            label=r.label,
            action=r.action,
            from_version=r.from_version,
            to_version=r.to_version,
            actor=r.actor,
            reason=r.reason,
            at=r.at,
        )
        for r in conn.execute(query)
    ]


def log(conn: sa.Connection, project_id: int, name: str) -> PromptLog:
    """Versions (message, author, hash, time), current labels and the label history."""
    prompt_id = prompt_id_of(conn, project_id, name)
    return PromptLog(
        name=name,
        versions=list_versions(conn, project_id, name),
        labels=labels_of(conn, project_id, prompt_id),
        events=_events(conn, project_id, prompt_id),
    )


# -- diff --------------------------------------------------------------------------------------


def _document(spec: Mapping[str, Any], pins: Mapping[str, int]) -> list[str]:
    """A version as text: the template first, then the configuration as sorted JSON."""
    lines = ["# template"]
    if spec.get("text") is not None:
        lines.extend(str(spec["text"]).splitlines())
    for message in spec.get("messages") or []:
        role = message.get("role", "?") if isinstance(message, Mapping) else "?"
        content = message.get("content") if isinstance(message, Mapping) else message
        lines.append(f"[{role}]")
        if isinstance(content, str):
            lines.extend(content.splitlines())
        else:
            lines.extend(orjson.dumps(content, option=orjson.OPT_INDENT_2).decode().splitlines())
    config = {k: v for k, v in spec.items() if k not in ("messages", "text")}
    if pins:
        config["pinned partials"] = dict(pins)
    lines.append("# config")
    option = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    lines.extend(orjson.dumps(config, option=option).decode().splitlines())
    return lines


def diff(conn: sa.Connection, project_id: int, name: str, a: str | int, b: str | int) -> str:
    """Unified diff of the template and configuration of versions (or labels) ``a`` and ``b``.

    Empty when the two are the same version or have the same content.
    """
    prompt_id = prompt_id_of(conn, project_id, name)
    sides = []
    for ref in (a, b):
        number = _resolve_ref(conn, project_id, prompt_id, name, ref)
        row = _version_row(conn, project_id, prompt_id, number)
        title = f"{name}@v{number}" + (f" ({ref})" if str(ref).lstrip("v") != str(number) else "")
        sides.append((title, _document(orjson.loads(row.spec), orjson.loads(row.partials))))
    (title_a, doc_a), (title_b, doc_b) = sides
    return "\n".join(difflib.unified_diff(doc_a, doc_b, title_a, title_b, lineterm=""))
