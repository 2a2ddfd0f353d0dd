"""Verifying the audit chain: every record in order, against its hash and its predecessor's.

Starting from the anchor (the last pruned record, or the genesis hash), each record must have
the next number, name the previous record's hash and hash to its own stored hash; the chain
head must name the last record. The first record that fails is reported:

- **changed**: its hash does not match its content (an edited field);
- **reordered**: its content hashes correctly under another number (rows swapped);
- **missing**: a number is skipped (a deleted record), or records the head counts are gone
  from the end (a truncated tail);
- **unlinked**: it hashes correctly but names another predecessor (a record inserted or
  rewritten by someone who could recompute plain SHA-256 hashes);
- **downgraded**: a plain SHA-256 record after HMAC-keyed ones (written without the secret).

HMAC-keyed records can only be checked with the secret; without it verification checks the
numbering and the links and reports how many records it could not check.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from bastion.audit.chain import HMAC_SHA256, MODES, AuditChain
from bastion.audit.log import AuditRecord, ChainHead, read_head
from bastion.audit.reading import iter_records

__all__ = ["PRUNE_ACTION", "Problem", "VerifyReport", "verify"]

PRUNE_ACTION = "audit.prune"
_REORDER_WINDOW = 64  # how far away a moved record's own number is looked for


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing wrong with the chain."""

    seq: int
    kind: str  # changed | reordered | missing | unlinked | downgraded | anchor | head
    message: str


@dataclass
class VerifyReport:
    """What :func:`verify` found."""

    head: ChainHead
    checked: int = 0  # records whose hash was recomputed
    first_seq: int | None = None
    last_seq: int | None = None
    unverifiable: int = 0  # HMAC-keyed records seen without the secret
    sha256_records: int = 0
    hmac_since: int | None = None  # the first HMAC-keyed record
    problem: Problem | None = None
    expect_checked: bool = False  # the record of ``expect`` was found

    @property
    def intact(self) -> bool:
        """No problem found and every record's hash checked."""
        return self.problem is None and self.unverifiable == 0


class _Walk:
    """The state of one pass over the records."""

    def __init__(self, chain: AuditChain, head: ChainHead) -> None:
        self.chain = chain
        self.report = VerifyReport(head=head)
        self.expected_seq = head.anchor_seq + 1
        self.prev_hash = head.anchor_hash
        self.pruned_through: int | None = None  # from the newest audit.prune record seen
        self.recent: list[AuditRecord] = []

    def fail(self, seq: int, kind: str, message: str) -> bool:
        self.report.problem = Problem(seq, kind, message)
        return False

    def step(self, rec: AuditRecord) -> bool:
        """Check one record; False once a problem is found."""
        report = self.report
        if rec.seq != self.expected_seq:
            return self.fail(
                self.expected_seq,
                "missing",
                f"record {self.expected_seq} is missing (deleted): the next record kept is "
                f"{rec.seq}",
            )
        if rec.hash_mode not in MODES:
            return self.fail(rec.seq, "changed", f"record {rec.seq} has an unknown hash mode")
        if rec.hash_mode == HMAC_SHA256:
            report.hmac_since = report.hmac_since or rec.seq
        elif report.hmac_since is not None:
            return self.fail(
                rec.seq,
                "downgraded",
                f"record {rec.seq} is plain SHA-256 after HMAC-keyed records (from "
                f"{report.hmac_since}): it was written or rewritten without the audit secret",
            )
        if self.chain.can_check(rec.hash_mode):
            if not self.chain.matches(rec.hashed_fields(), rec.hash_mode, rec.hash):
                return self._changed(rec)
            report.checked += 1
        else:
            report.unverifiable += 1
        if rec.prev_hash != self.prev_hash:
            return self.fail(
                rec.seq,
                "unlinked",
                f"record {rec.seq} does not follow record {rec.seq - 1}: it names another "
                "predecessor (records were inserted, removed or rewritten)",
            )
        report.sha256_records += rec.hash_mode != HMAC_SHA256
        report.first_seq = report.first_seq or rec.seq
        report.last_seq = rec.seq
        if rec.action == PRUNE_ACTION and rec.details is not None:
            self.pruned_through = int(orjson.loads(rec.details).get("through_seq", -1))
        self.expected_seq += 1
        self.prev_hash = rec.hash
        return True

    def _changed(self, rec: AuditRecord) -> bool:
        """A hash mismatch: a record moved from another number, or one whose content changed."""
        for other in range(max(1, rec.seq - _REORDER_WINDOW), rec.seq + _REORDER_WINDOW + 1):
            fields = rec.hashed_fields(seq=other)
            if other != rec.seq and self.chain.matches(fields, rec.hash_mode, rec.hash):
                return self.fail(
                    rec.seq,
                    "reordered",
                    f"record {rec.seq} holds the record written as {other}: records were reordered",
                )
        return self.fail(
            rec.seq,
            "changed",
            f"record {rec.seq} was changed: its hash does not match its content "
            f"({rec.action} {rec.object_type} {rec.object_id!r} by {rec.actor})",
        )

    def finish(self) -> None:
        """After the last record: the head and the anchor must agree with what was read."""
        head = self.report.head
        last = self.expected_seq - 1
        if head.last_seq > last:
            self.fail(
                last + 1,
                "missing",
                f"records {last + 1} to {head.last_seq} are missing: the chain head says "
                f"there were {head.last_seq} (the log was truncated)",
            )
        elif head.last_seq < last:
            self.fail(
                head.last_seq + 1,
                "head",
                f"records after {head.last_seq} were not appended through the chain head",
            )
        elif head.last_hash != self.prev_hash:
            self.fail(last, "head", f"the chain head's hash does not match record {last}")
        elif head.anchor_seq and self.pruned_through != head.anchor_seq:
            self.fail(
                head.anchor_seq,
                "anchor",
                f"records up to {head.anchor_seq} are gone, but no audit.prune record says "
                "they were pruned",
            )


def verify(
    conn: sa.Connection, chain: AuditChain, *, expect: tuple[int, str] | None = None
) -> VerifyReport:
    """Check the whole chain (see the module docstring); stops at the first problem.

    ``expect`` is a ``(seq, hash)`` kept outside the database (printed by an earlier
    verification): the record must still exist with that hash, which catches a chain
    rewritten or truncated by someone who could also recompute the hashes.
    """
    walk = _Walk(chain, read_head(conn))
    for rec in iter_records(conn):
        if expect is not None and rec.seq == expect[0]:
            walk.report.expect_checked = True
            if rec.hash != expect[1]:
                walk.fail(rec.seq, "changed", f"record {rec.seq} no longer has the hash kept")
                return walk.report
        if not walk.step(rec):
            return walk.report
    walk.finish()
    if walk.report.problem is None and expect is not None and not walk.report.expect_checked:
        kept_from = walk.report.head.anchor_seq + 1
        where = "was pruned" if expect[0] < kept_from else "is missing (the log was truncated)"
        walk.fail(expect[0], "missing", f"record {expect[0]} you kept {where}")
    return walk.report
