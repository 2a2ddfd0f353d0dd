"""Dataset versions in the store: immutable and content-addressed, like prompt versions.

Pushing items whose :meth:`~bastion.evals.datasets.DatasetVersion.content_hash` a version of
that name already has creates nothing and answers with that version. A *locked* version is a
golden set: pushing different content under the same name is refused while the newest version
is locked (``force=True`` overrides, creating a new version). Given an
:class:`~bastion.audit.AuditTrail` (``audit=``), a new version (``dataset.push``) and a lock
(``dataset.lock``) append their audit records in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.evals.datasets import DatasetError, DatasetVersion, Item
from bastion.evals.store_common import (
    DatasetLockedError,
    EvalStoreError,
    canonical_json,
    utc_now,
)
from bastion.names import DATASET as DATASET_NAME
from bastion.names import InvalidName
from bastion.store.schema import eval_dataset_items, eval_datasets, eval_item_sources
from bastion.store.storable import storable_key
from bastion.store.transactions import run_write

__all__ = [
    "DatasetInfo",
    "PushedDataset",
    "StoredDataset",
    "get_dataset",
    "item_sources",
    "list_datasets",
    "lock_dataset",
    "push_dataset",
]


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    name: str
    version: int
    content_hash: str
    item_count: int
    locked: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PushedDataset:
    info: DatasetInfo
    status: Literal["created", "unchanged"]


@dataclass(frozen=True, slots=True)
class StoredDataset:
    """A dataset version with its items, as stored."""

    info: DatasetInfo
    items: tuple[Item, ...]
    item_hashes: Mapping[str, str] = field(default_factory=dict)  # item id -> content hash

    @property
    def ref(self) -> str:
        return f"{self.info.name}@{self.info.version}"


def _info(row: Any) -> DatasetInfo:
    return DatasetInfo(
        name=row.name,
        version=int(row.version),
        content_hash=row.content_hash,
        item_count=int(row.item_count),
        locked=bool(row.locked),
        created_at=row.created_at,
    )


def _version_row(conn: sa.Connection, project_id: int, name: str, version: int | None) -> Any:
    """The ``eval_datasets`` row of ``name`` at ``version`` (the newest when None), or None."""
    query = sa.select(eval_datasets).where(
        eval_datasets.c.project_id == project_id, eval_datasets.c.name == name
    )
    if version is None:
        query = query.order_by(eval_datasets.c.version.desc()).limit(1)
    else:
        query = query.where(eval_datasets.c.version == version)
    return conn.execute(query).one_or_none()


def _item_json(item: Item) -> str:
    return canonical_json(
        {
            "id": item.id,
            "vars": dict(item.vars),
            "expected": item.expected,
            "tags": list(item.tags),
            "metadata": dict(item.metadata),
        }
    )


def _item_from_json(text: str) -> Item:
    data = orjson.loads(text)
    return Item(
        id=data["id"],
        vars=data.get("vars") or {},
        expected=data.get("expected"),
        tags=tuple(data.get("tags") or ()),
        metadata=data.get("metadata") or {},
    )


def _record(
    conn: sa.Connection, audit: AuditTrail | None, project_id: int, info: DatasetInfo, action: str
) -> None:
    """The audit record of a new version (``push``) or a version locked (``lock``)."""
    if audit is None:
        return
    audit.record(
        conn,
        f"dataset.{action}",
        "dataset",
        f"{info.name}@{info.version}",
        project_id=project_id,
        before=None if action == "push" else {"content_hash": info.content_hash, "locked": False},
        after={"content_hash": info.content_hash, "locked": info.locked},
        details={
            "name": info.name,
            "version": info.version,
            "content_hash": info.content_hash,
            "items": info.item_count,
            "locked": info.locked,
        },
    )


def _reuse_version(
    conn: sa.Connection,
    project_id: int,
    name: str,
    digest: str,
    *,
    lock: bool,
    audit: AuditTrail | None,
) -> PushedDataset | None:
    """The version of ``name`` already holding content ``digest`` (locked now if ``lock``)."""
    existing = conn.execute(
        sa.select(eval_datasets).where(
            eval_datasets.c.project_id == project_id,
            eval_datasets.c.name == name,
            eval_datasets.c.content_hash == digest,
        )
    ).one_or_none()
    if existing is None:
        return None
    info = _info(existing)
    if lock:
        info = replace(info, locked=True)
    if lock and not existing.locked:
        conn.execute(
            eval_datasets.update().where(eval_datasets.c.id == existing.id).values(locked=True)
        )
        _record(conn, audit, project_id, info, "lock")
    return PushedDataset(info, "unchanged")


def _next_version(conn: sa.Connection, project_id: int, name: str, *, force: bool) -> int:
    """The number a new version of ``name`` gets; refused when the newest is locked."""
    newest = conn.execute(
        sa.select(eval_datasets.c.version, eval_datasets.c.locked)
        .where(eval_datasets.c.project_id == project_id, eval_datasets.c.name == name)
        .order_by(eval_datasets.c.version.desc())
        .limit(1)
    ).one_or_none()
    if newest is not None and newest.locked and not force:
        raise DatasetLockedError(
            f"dataset {name!r} version {newest.version} is locked: its items changed, so "
            "push them under a new name (or pass --force to add a new version)"
        )
    return 1 if newest is None else int(newest.version) + 1


def _insert_version(
    conn: sa.Connection,
    project_id: int,
    info: DatasetInfo,
    encoded: Sequence[tuple[Item, str, str]],
    sources: Mapping[str, tuple[str, str]] | None,
) -> None:
    """Insert version ``info`` with its items and the spans they were made from."""
    dataset_id = conn.execute(
        eval_datasets.insert()
        .values(
            project_id=project_id,
            name=info.name,
            version=info.version,
            content_hash=info.content_hash,
            item_count=info.item_count,
            locked=info.locked,
            created_at=info.created_at,
        )
        .returning(eval_datasets.c.id)
    ).scalar_one()
    if encoded:
        conn.execute(
            eval_dataset_items.insert(),
            [
                {
                    "project_id": project_id,
                    "dataset_version_id": dataset_id,
                    "position": position,
                    "item_id": storable_key(item.id, 200),
                    "item_hash": item_hash,
                    "item": text,
                }
                for position, (item, item_hash, text) in enumerate(encoded)
            ],
        )
    links = [
        {
            "project_id": project_id,
            "dataset_version_id": dataset_id,
            "item_id": storable_key(item.id, 200),
            "trace_id": sources[item.id][0],
            "span_id": sources[item.id][1],
        }
        for item, _, _ in encoded
        if sources and item.id in sources
    ]
    if links:
        conn.execute(eval_item_sources.insert(), links)


def push_dataset(
    engine: sa.Engine,
    project_id: int,
    name: str,
    items: Sequence[Item],
    *,
    lock: bool = False,
    force: bool = False,
    sources: Mapping[str, tuple[str, str]] | None = None,
    audit: AuditTrail | None = None,
) -> PushedDataset:
    """Store ``items`` as a version of dataset ``name`` (or find the version that has them).

    ``lock`` locks the resulting version (also an existing, unchanged one). ``sources`` maps
    item ids to the ``(trace_id, span_id)`` they were made from, stored with a new version.

    Raises:
        DatasetError: repeated item ids, or a name that is not a valid dataset name.
        DatasetLockedError: the content is new and the newest version is locked (unless
            ``force``).
    """
    try:
        DATASET_NAME.check(name)
    except InvalidName as exc:
        raise DatasetError(str(exc)) from None
    version = DatasetVersion(name=name, items=tuple(items))
    digest = version.content_hash()
    encoded = [(item, item.content_hash(), _item_json(item)) for item in version.items]

    def work(conn: sa.Connection) -> PushedDataset:
        unchanged = _reuse_version(conn, project_id, name, digest, lock=lock, audit=audit)
        if unchanged is not None:
            return unchanged
        number = _next_version(conn, project_id, name, force=force)
        info = DatasetInfo(name, number, digest, len(encoded), lock, utc_now())
        _insert_version(conn, project_id, info, encoded, sources)
        _record(conn, audit, project_id, info, "push")
        return PushedDataset(info, "created")

    return run_write(engine, work)


def lock_dataset(
    engine: sa.Engine,
    project_id: int,
    name: str,
    version: int | None = None,
    *,
    audit: AuditTrail | None = None,
) -> DatasetInfo:
    """Lock one version of dataset ``name`` (the newest when ``version`` is None) and return
    it. Locking is one-way: a golden set stays golden; new content needs a new version.

    Raises:
        EvalStoreError: no such dataset or version.
    """

    def work(conn: sa.Connection) -> DatasetInfo:
        row = _version_row(conn, project_id, name, version)
        if row is None:
            which = "" if version is None else f" version {version}"
            raise EvalStoreError(f"no dataset {name!r}{which} in this project")
        info = replace(_info(row), locked=True)
        if not row.locked:
            conn.execute(
                eval_datasets.update().where(eval_datasets.c.id == row.id).values(locked=True)
            )
            _record(conn, audit, project_id, info, "lock")
        return info

    return run_write(engine, work)


def item_sources(
    conn: sa.Connection, project_id: int, name: str, version: int
) -> dict[str, tuple[str, str]]:
    """``item id -> (trace_id, span_id)`` for the items of a version made from traces."""
    rows = conn.execute(
        sa.select(
            eval_item_sources.c.item_id, eval_item_sources.c.trace_id, eval_item_sources.c.span_id
        )
        .select_from(
            eval_item_sources.join(
                eval_datasets, eval_datasets.c.id == eval_item_sources.c.dataset_version_id
            )
        )
        .where(
            eval_item_sources.c.project_id == project_id,
            eval_datasets.c.project_id == project_id,
            eval_datasets.c.name == name,
            eval_datasets.c.version == version,
        )
    )
    return {r.item_id: (r.trace_id, r.span_id) for r in rows}


def get_dataset(
    conn: sa.Connection, project_id: int, name: str, version: int | None = None
) -> StoredDataset:
    """A dataset version with its items in order (the newest version when ``version`` is None).

    Raises:
        EvalStoreError: no such dataset or version.
    """
    row = _version_row(conn, project_id, name, version)
    if row is None:
        if version is None:
            raise EvalStoreError(f"no dataset {name!r} (push one with `bastion eval dataset push`)")
        newest = conn.execute(
            sa.select(sa.func.max(eval_datasets.c.version)).where(
                eval_datasets.c.project_id == project_id, eval_datasets.c.name == name
            )
        ).scalar()
        have = f"newest is {newest}" if newest is not None else "no versions at all"
        raise EvalStoreError(f"dataset {name!r} has no version {version} ({have})")
    rows = conn.execute(
        sa.select(eval_dataset_items.c.item, eval_dataset_items.c.item_hash)
        .where(
            eval_dataset_items.c.project_id == project_id,
            eval_dataset_items.c.dataset_version_id == row.id,
        )
        .order_by(eval_dataset_items.c.position)
    ).all()
    items = tuple(_item_from_json(r.item) for r in rows)
    hashes = {item.id: r.item_hash for item, r in zip(items, rows, strict=True)}
    return StoredDataset(_info(row), items, hashes)


def list_datasets(conn: sa.Connection, project_id: int) -> list[DatasetInfo]:
    """Every dataset version of the project, by name then version."""
    rows = conn.execute(
        sa.select(eval_datasets)
        .where(eval_datasets.c.project_id == project_id)
        .order_by(eval_datasets.c.name, eval_datasets.c.version)
    ).all()
    return [_info(r) for r in rows]
