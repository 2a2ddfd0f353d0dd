"""Appending to the audit log, in the caller's transaction.

:func:`record` locks the chain head (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite its first
statement is a write, which takes the database's single write lock), numbers the record one
past the head, hashes it with the head's hash and moves the head: concurrent writers append
in turn and never fork the chain. The record commits or rolls back with the change it
describes, because it is written on the caller's connection.

The head is the last lock a transaction should take: record after the change's own rows are
locked and written, so the head is held only until the commit that follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from bastion.audit.chain import GENESIS, HMAC_SHA256, SHA256, AuditChain
from bastion.audit.events import MAX_REASON_CHARS, AuditEvent, digest
from bastion.store.schema import audit_chain, audit_log
from bastion.store.storable import storable_key, storable_text

__all__ = ["AuditError", "AuditRecord", "ChainHead", "lock_head", "read_head", "record"]

_HEAD_ID = 1


class AuditError(RuntimeError):
    """The audit log cannot be written as asked (a broken head, a missing secret)."""


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest record's number and hash, and the anchor left by pruning."""

    last_seq: int
    last_hash: str
    hash_mode: str
    anchor_seq: int  # the last pruned record (0: nothing pruned)
    anchor_hash: str  # its hash: the "previous hash" of the oldest record kept


_EMPTY = ChainHead(0, GENESIS, SHA256, 0, GENESIS)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored audit record."""

    seq: int
    at: datetime
    actor: str
    project_id: int | None
    action: str
    object_type: str
    object_id: str
    before_digest: str | None
    after_digest: str | None
    details: str | None  # canonical JSON, as stored and hashed
    reason: str | None
    request_id: str | None
    prev_hash: str
    hash: str
    hash_mode: str

    def hashed_fields(self, *, seq: int | None = None) -> dict[str, Any]:
        """What the hash covers: every field but the hash (``seq`` replaced when given)."""
        return {
            "seq": self.seq if seq is None else seq,
            "at": self.at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": self.actor,
            "project_id": self.project_id,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "before_digest": self.before_digest,
            "after_digest": self.after_digest,
            "details": self.details,
            "reason": self.reason,
            "request_id": self.request_id,
            "prev_hash": self.prev_hash,
            "hash_mode": self.hash_mode,
        }

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON: ``details`` parsed, ``at`` in RFC 3339."""
        out = self.hashed_fields()
        out["details"] = None if self.details is None else orjson.loads(self.details)
        out["hash"] = self.hash
        return out

    @classmethod
    def from_row(cls, row: Any) -> AuditRecord:
        return cls(
            seq=int(row.seq),
            at=row.at,
            actor=row.actor,
            project_id=row.project_id,
            action=row.action,
            object_type=row.object_type,
            object_id=row.object_id,
            before_digest=row.before_digest,
            after_digest=row.after_digest,
            details=row.details,
            reason=row.reason,
            request_id=row.request_id,
            prev_hash=row.prev_hash,
            hash=row.hash,
            hash_mode=row.hash_mode,
        )


def _head(row: Any) -> ChainHead:
    return ChainHead(
        int(row.last_seq), row.last_hash, row.hash_mode, int(row.anchor_seq), row.anchor_hash
    )


def read_head(conn: sa.Connection) -> ChainHead:
    """The chain head without locking it (an empty chain's when none was written yet)."""
    row = conn.execute(sa.select(audit_chain).where(audit_chain.c.id == _HEAD_ID)).one_or_none()
    return _EMPTY if row is None else _head(row)


def _select_head(conn: sa.Connection) -> Any:
    query = sa.select(audit_chain).where(audit_chain.c.id == _HEAD_ID)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one_or_none()


def _create_head(conn: sa.Connection) -> None:
    """Insert the empty head unless a concurrent writer did: the insert then waits for that
    writer's commit and does nothing, and the head's lock is taken next."""
    values = {
        "id": _HEAD_ID,
        "last_seq": 0,
        "last_hash": GENESIS,
        "hash_mode": SHA256,
        "anchor_seq": 0,
        "anchor_hash": GENESIS,
    }
    insert = (pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect).insert
    created = conn.execute(
        insert(audit_chain).values(**values).on_conflict_do_nothing().returning(audit_chain.c.id)
    ).first()
    if created is not None and conn.execute(sa.select(audit_log.c.seq).limit(1)).first():
        raise AuditError(
            "the audit chain head is missing while audit records exist: the log was tampered "
            "with (run `bastion audit verify`); nothing more is recorded until it is repaired"
        )


def lock_head(conn: sa.Connection) -> ChainHead:
    """Lock the chain head for the rest of the transaction and return it (created if new)."""
    if conn.dialect.name == "sqlite":
        # A no-op write: the first write of a transaction takes SQLite's write lock, so from
        # here on no other connection can append, and the head read next is the newest.
        conn.execute(
            audit_chain.update()
            .where(audit_chain.c.id == _HEAD_ID)
            .values(last_seq=audit_chain.c.last_seq)
        )
    row = _select_head(conn)
    if row is None:
        _create_head(conn)
        row = _select_head(conn)
    return _head(row)


def _storable(event: AuditEvent) -> dict[str, Any]:
    """The event's fields as they will be stored (and so hashed)."""
    return {
        "actor": storable_text(event.actor, 300),
        "project_id": event.project_id,
        "action": event.action,
        "object_type": storable_text(event.object_type, 100),
        "object_id": storable_key(event.object_id, 500),
        "before_digest": None if event.before is None else digest(event.before),
        "after_digest": None if event.after is None else digest(event.after),
        "details": event.details_json(),
        "reason": None if event.reason is None else storable_text(event.reason, MAX_REASON_CHARS),
        "request_id": None if event.request_id is None else storable_text(event.request_id, 64),
    }


def record(conn: sa.Connection, event: AuditEvent, *, chain: AuditChain) -> AuditRecord:
    """Append ``event`` to the audit log in ``conn``'s transaction and return the record.

    Raises:
        ValueError: the event is malformed (see :meth:`AuditEvent.check`).
        AuditError: the chain is HMAC-keyed and ``chain`` has no secret (records written
            without it could not be told from forgeries), or the head is missing.
    """
    event.check()
    head = lock_head(conn)
    if head.hash_mode == HMAC_SHA256 and chain.mode != HMAC_SHA256:
        raise AuditError(
            "the audit log is HMAC-keyed and this process has no audit secret: set the "
            "environment variable audit.secret_env names to record changes"
        )
    at = datetime.now(UTC)
    new = AuditRecord(
        seq=head.last_seq + 1,
        at=at,
        **_storable(event),
        prev_hash=head.last_hash,
        hash="",
        hash_mode=chain.mode,
    )
    fields = new.hashed_fields()
    stored_hash = chain.hash(fields, chain.mode)
    row = {key: value for key, value in fields.items() if key != "at"}
    conn.execute(audit_log.insert().values(**row, at=at, hash=stored_hash))
    conn.execute(
        audit_chain.update()
        .where(audit_chain.c.id == _HEAD_ID)
        .values(last_seq=new.seq, last_hash=stored_hash, hash_mode=chain.mode)
    )
    return AuditRecord(**{**fields, "at": at, "hash": stored_hash})
