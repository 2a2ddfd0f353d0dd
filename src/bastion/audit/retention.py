"""Pruning old audit records while keeping what remains verifiable.

Records are pruned from the oldest, in number order, up to the first one that is not old
enough. Before deleting, the hash of the last pruned record is kept in the chain head as the
*anchor*: verification starts from it, so the oldest record kept still has to name it as its
predecessor. Each prune then appends an ``audit.prune`` record saying up to which number it
pruned; verification checks the anchor against the newest of these, so moving the anchor
forward to hide deleted records is reported (and in HMAC mode cannot be covered up, since
the prune record cannot be forged). Records are never pruned by default
(``audit.retention_days`` unset).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bastion.audit.chain import AuditChain
from bastion.audit.log import AuditError, lock_head, read_head
from bastion.audit.trail import AuditTrail
from bastion.audit.verification import PRUNE_ACTION
from bastion.settings import AuditSettings
from bastion.store.schema import audit_chain, audit_log
from bastion.store.transactions import run_write

__all__ = ["PruneResult", "prune", "prune_before", "prune_expired", "retention_cutoff"]

RETENTION_ACTOR = "system:audit-retention"


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one prune removed: records ``from_seq`` to ``through_seq``."""

    from_seq: int
    through_seq: int
    anchor_hash: str

    @property
    def count(self) -> int:
        return self.through_seq - self.from_seq + 1


def retention_cutoff(settings: AuditSettings, now: datetime | None = None) -> datetime | None:
    """Records older than this are pruned; None when they are kept forever."""
    if settings.retention_days is None:
        return None
    return (now or datetime.now(UTC)) - timedelta(days=settings.retention_days)


def prune(
    conn: sa.Connection,
    chain: AuditChain,
    *,
    before: datetime,
    limit: int = 10_000,
    until_seq: int | None = None,
    actor: str = RETENTION_ACTOR,
) -> PruneResult | None:
    """Delete at most ``limit`` of the oldest records written before ``before`` (and none
    after ``until_seq``), move the anchor and record the prune, in ``conn``'s transaction;
    None when nothing is old enough."""
    head = lock_head(conn)
    newer = conn.execute(
        sa.select(sa.func.min(audit_log.c.seq)).where(
            audit_log.c.seq > head.anchor_seq, audit_log.c.at >= before
        )
    ).scalar()
    through = min(head.last_seq if newer is None else int(newer) - 1, head.anchor_seq + limit)
    if until_seq is not None:
        through = min(through, until_seq)
    if through <= head.anchor_seq:
        return None
    anchor_hash = conn.execute(
        sa.select(audit_log.c.hash).where(audit_log.c.seq == through)
    ).scalar()
    if anchor_hash is None:
        raise AuditError(
            f"audit record {through} is missing: run `bastion audit verify` before pruning"
        )
    conn.execute(audit_log.delete().where(audit_log.c.seq <= through))
    conn.execute(
        audit_chain.update()
        .where(audit_chain.c.id == 1)
        .values(anchor_seq=through, anchor_hash=anchor_hash)
    )
    result = PruneResult(head.anchor_seq + 1, through, anchor_hash)
    AuditTrail(chain, actor).record(
        conn,
        PRUNE_ACTION,
        "audit_log",
        f"{result.from_seq}-{through}",
        project_id=None,
        details={
            "from_seq": result.from_seq,
            "through_seq": through,
            "records": result.count,
            "anchor_hash": anchor_hash,
            "before": before.astimezone(UTC).isoformat(),
        },
    )
    return result


def prune_before(
    engine: sa.Engine,
    chain: AuditChain,
    before: datetime,
    *,
    actor: str = RETENTION_ACTOR,
    batch: int = 10_000,
) -> int:
    """Prune every record written before ``before``, ``batch`` per transaction (so writers
    are held up briefly each time); how many were pruned. The prune records this appends are
    never pruned by the same call."""
    with engine.connect() as conn:
        last = read_head(conn).last_seq
    pruned = 0
    while True:
        result = run_write(
            engine,
            lambda conn: prune(
                conn, chain, before=before, limit=batch, until_seq=last, actor=actor
            ),
        )
        if result is None:
            return pruned
        pruned += result.count


def prune_expired(
    engine: sa.Engine,
    chain: AuditChain,
    settings: AuditSettings,
    *,
    now: datetime | None = None,
    batch: int = 10_000,
) -> int:
    """Prune every record past ``settings.retention_days`` (see :func:`prune_before`); nothing
    without a retention period."""
    cutoff = retention_cutoff(settings, now)
    if cutoff is None:
        return 0
    return prune_before(engine, chain, cutoff, batch=batch)
