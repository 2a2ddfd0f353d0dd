"""What changes between two releases: configuration values and prompt templates.

Configuration is compared key by key (model, fallbacks, each parameter, tools, guard policy,
description); prompts are compared by name, and a prompt whose pinned version differs carries
both templates (text, or each message as ``[role]`` plus content) and the registry's unified
diff of the two versions, so a reviewer sees the wording change next to the model change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.prompts import registry
from bastion.prompts.registry_queries import select_version
from bastion.releases.store import ReleaseInfo, get_release
from bastion.store.schema import prompt_versions

__all__ = ["ConfigChange", "PromptChange", "ReleaseDiff", "diff_releases"]

_MISSING = "∅"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    key: str
    a: str
    b: str


@dataclass(frozen=True, slots=True)
class PromptChange:
    name: str
    version_a: int | None
    version_b: int | None
    template_a: str
    template_b: str
    unified: str


@dataclass(frozen=True, slots=True)
class ReleaseDiff:
    a: ReleaseInfo
    b: ReleaseInfo
    config: tuple[ConfigChange, ...]
    prompts: tuple[PromptChange, ...]

    @property
    def empty(self) -> bool:
        return not self.config and not self.prompts

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.release_id,
            "b": self.b.release_id,
            "config": [{"key": c.key, "a": c.a, "b": c.b} for c in self.config],
            "prompts": [
                {
                    "name": p.name,
                    "version_a": p.version_a,
                    "version_b": p.version_b,
                    "template_a": p.template_a,
                    "template_b": p.template_b,
                    "diff": p.unified,
                }
                for p in self.prompts
            ],
        }


def _show(value: Any) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode()


def _flat(info: ReleaseInfo) -> dict[str, Any]:
    spec = info.spec
    out: dict[str, Any] = {"name": spec.name, "model": spec.model}
    if spec.description:
        out["description"] = spec.description
    if spec.fallbacks:
        out["fallbacks"] = list(spec.fallbacks)
    for key, value in spec.params.items():
        out[f"params.{key}"] = value
    if spec.tools:
        out["tools"] = [dict(t) for t in spec.tools]
    for key, value in spec.guard.items():
        out[f"guard.{key}"] = value
    return out


def _template(conn: sa.Connection, project_id: int, name: str, version: int | None) -> str:
    if version is None:
        return _MISSING
    row = conn.execute(
        select_version(prompt_versions.c.spec, project_id=project_id, name=name, version=version)
    ).first()
    if row is None:
        return f"(version {version} not in the registry)"
    spec = orjson.loads(row.spec)
    if spec.get("text") is not None:
        return str(spec["text"])
    lines = []
    for message in spec.get("messages") or []:
        content = message.get("content")
        lines.append(f"[{message.get('role', '?')}]")
        lines.append(content if isinstance(content, str) else _show(content))
    return "\n".join(lines)


def diff_releases(conn: sa.Connection, project_id: int, a_ref: str, b_ref: str) -> ReleaseDiff:
    """The changes from release ``a_ref`` to release ``b_ref`` (ids, prefixes or names)."""
    a, b = get_release(conn, project_id, a_ref), get_release(conn, project_id, b_ref)
    flat_a, flat_b = _flat(a), _flat(b)
    config = tuple(
        ConfigChange(key, _show(flat_a.get(key)), _show(flat_b.get(key)))
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    )
    changes = []
    for name in sorted(set(a.spec.prompts) | set(b.spec.prompts)):
        va, vb = a.spec.prompts.get(name), b.spec.prompts.get(name)
        if va == vb:
            continue
        unified = ""
        if va is not None and vb is not None:
            unified = registry.diff(conn, project_id, name, va, vb)
        changes.append(
            PromptChange(
                name,
                va,
                vb,
                _template(conn, project_id, name, va),
                _template(conn, project_id, name, vb),
                unified,
            )
        )
    return ReleaseDiff(a, b, config, tuple(changes))
