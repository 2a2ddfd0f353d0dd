"""The hash chain on SQLite and PostgreSQL: appends, concurrency, verification, pruning."""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.audit import (
    GENESIS,
    HMAC_SHA256,
    SHA256,
    AuditChain,
    AuditConfigError,
    AuditError,
    AuditEvent,
    AuditRecord,
    AuditTrail,
    prune,
    prune_expired,
    record,
    verify,
)
from bastion.audit.chain import canonical_bytes
from bastion.settings import AuditSettings
from bastion.store.schema import audit_chain, audit_log
from bastion.store.transactions import run_write
from tests.audit.support import SECRET, SECRET_ENV, head, rows

HMAC = AuditChain(SECRET)
PLAIN = AuditChain()


def _append(engine: sa.Engine, chain: AuditChain, count: int, *, actor: str = "key:1") -> None:
    trail = AuditTrail(chain, actor, request_id="req-1")
    for i in range(count):
        with engine.begin() as conn:
            trail.record(
                conn,
                "prompt.push",
                "prompt",
                f"p{i}",
                project_id=1,
                before=None if i == 0 else {"version": i},
                after={"version": i + 1},
                details={"version": i + 1},
                reason=f"change {i}",
            )


def test_records_are_numbered_and_linked(engine: sa.Engine) -> None:
    _append(engine, PLAIN, 3)
    stored = rows(engine)
    assert [r["seq"] for r in stored] == [1, 2, 3]
    assert stored[0]["prev_hash"] == GENESIS
    assert [r["prev_hash"] for r in stored[1:]] == [r["hash"] for r in stored[:-1]]
    assert {r["hash_mode"] for r in stored} == {SHA256}
    first = stored[0]
    assert first["after_digest"] == "sha256:" + hashlib.sha256(b'{"version":1}').hexdigest()
    assert first["before_digest"] is None
    assert orjson.loads(first["details"]) == {"version": 1}
    assert (first["actor"], first["request_id"], first["project_id"]) == ("key:1", "req-1", 1)
    # The stored hash is SHA-256 over exactly the stored fields.
    rec = AuditRecord.from_row(_row(engine, 2))
    assert rec.hash == hashlib.sha256(canonical_bytes(rec.hashed_fields())).hexdigest()
    assert head(engine)["last_seq"] == 3
    assert head(engine)["last_hash"] == stored[-1]["hash"]
    with engine.connect() as conn:
        report = verify(conn, PLAIN)
    assert report.intact
    assert (report.checked, report.first_seq, report.last_seq) == (3, 1, 3)


def _row(engine: sa.Engine, seq: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(audit_log).where(audit_log.c.seq == seq)).one()


def test_hmac_chain_needs_the_secret_to_extend_and_to_check(engine: sa.Engine) -> None:
    _append(engine, PLAIN, 1)  # history from before the secret was set
    _append(engine, HMAC, 2)
    assert [r["hash_mode"] for r in rows(engine)] == [SHA256, HMAC_SHA256, HMAC_SHA256]
    with pytest.raises(AuditError, match="no audit secret"), engine.begin() as conn:
        record(conn, AuditEvent("key:1", "prompt.push", "prompt", "x"), chain=PLAIN)
    assert len(rows(engine)) == 3
    with engine.connect() as conn:
        keyed = verify(conn, HMAC)
        blind = verify(conn, PLAIN)
        wrong = verify(conn, AuditChain("another-secret-" + "x" * 40))
    assert keyed.intact
    assert (keyed.hmac_since, keyed.sha256_records) == (2, 1)
    assert blind.problem is None
    assert (blind.intact, blind.unverifiable) == (False, 2)
    assert wrong.problem is not None
    assert wrong.problem.seq == 2


def test_a_rolled_back_change_leaves_no_record_and_no_gap(engine: sa.Engine) -> None:
    trail = AuditTrail(PLAIN, "key:1")

    def change_that_fails() -> None:
        with engine.begin() as conn:
            trail.record(conn, "label.move", "label", "a:production", project_id=1)
            raise RuntimeError("the change failed after its record")

    with pytest.raises(RuntimeError, match="the change failed"):
        change_that_fails()
    assert rows(engine) == []
    _append(engine, PLAIN, 1)
    assert [r["seq"] for r in rows(engine)] == [1]
    with engine.connect() as conn:
        assert verify(conn, PLAIN).intact


def _push_record(conn: sa.Connection, *, trail: AuditTrail, object_id: str) -> AuditRecord:
    return trail.record(conn, "prompt.push", "prompt", object_id, project_id=1)


def test_concurrent_appends_keep_one_linear_chain(engine: sa.Engine) -> None:
    writers, each = 6, 15
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(n: int) -> None:
        trail = AuditTrail(HMAC, f"key:{n}")
        try:
            start.wait()
            for i in range(each):
                run_write(engine, partial(_push_record, trail=trail, object_id=f"w{n}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = rows(engine)
    assert [r["seq"] for r in stored] == list(range(1, writers * each + 1))
    assert len({r["object_id"] for r in stored}) == writers * each
    assert len({r["prev_hash"] for r in stored}) == writers * each  # no fork: one successor each
    with engine.connect() as conn:
        assert verify(conn, HMAC).intact


# -- tampering ---------------------------------------------------------------------------------


def _sql(engine: sa.Engine, *statements: Any) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _edit(engine: sa.Engine) -> None:
    _sql(engine, audit_log.update().where(audit_log.c.seq == 3).values(reason="nothing to see"))


def _delete(engine: sa.Engine) -> None:
    _sql(engine, audit_log.delete().where(audit_log.c.seq == 3))


def _swap(engine: sa.Engine) -> None:
    c = audit_log.c
    _sql(
        engine,
        audit_log.update().where(c.seq == 3).values(seq=1000),
        audit_log.update().where(c.seq == 4).values(seq=3),
        audit_log.update().where(c.seq == 1000).values(seq=4),
    )


def _truncate(engine: sa.Engine) -> None:
    _sql(engine, audit_log.delete().where(audit_log.c.seq >= 5))


def _rehash(engine: sa.Engine, seq: int, mode: str, **changes: Any) -> None:
    """Change record ``seq`` and recompute its hash with plain SHA-256 (no secret needed)."""
    rec = AuditRecord.from_row(_row(engine, seq))
    fields = {**rec.hashed_fields(), **changes, "hash_mode": mode}
    forged = hashlib.sha256(canonical_bytes(fields)).hexdigest()
    values = {k: v for k, v in fields.items() if k not in ("at", "seq")}
    _sql(engine, audit_log.update().where(audit_log.c.seq == seq).values(**values, hash=forged))


def _forge_as_sha256(engine: sa.Engine) -> None:
    _rehash(engine, 3, SHA256, actor="key:999")


def _forge_keeping_hmac_mode(engine: sa.Engine) -> None:
    _rehash(engine, 3, HMAC_SHA256, actor="key:999")


TAMPERING: list[tuple[str, Callable[[sa.Engine], None], AuditChain, int, str]] = [
    ("edited row", _edit, PLAIN, 3, "changed"),
    ("edited row, hmac", _edit, HMAC, 3, "changed"),
    ("deleted row", _delete, HMAC, 3, "missing"),
    ("swapped rows", _swap, PLAIN, 3, "reordered"),
    ("swapped rows, hmac", _swap, HMAC, 3, "reordered"),
    ("truncated tail", _truncate, HMAC, 5, "missing"),
    ("forged as sha256", _forge_as_sha256, HMAC, 3, "downgraded"),
    ("forged, hmac mode kept", _forge_keeping_hmac_mode, HMAC, 3, "changed"),
]


@pytest.mark.parametrize(
    ("tamper", "chain", "seq", "kind"),
    [pytest.param(t, c, s, k, id=name) for name, t, c, s, k in TAMPERING],
)
def test_verify_names_the_first_tampered_record(
    engine: sa.Engine,
    tamper: Callable[[sa.Engine], None],
    chain: AuditChain,
    seq: int,
    kind: str,
) -> None:
    _append(engine, chain, 6)
    with engine.connect() as conn:
        assert verify(conn, chain).intact
    tamper(engine)
    with engine.connect() as conn:
        report = verify(conn, chain)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (seq, kind), report.problem.message
    assert str(seq) in report.problem.message


def test_a_rewritten_plain_chain_is_caught_by_a_hash_kept_elsewhere(engine: sa.Engine) -> None:
    """Plain SHA-256 can be recomputed by whoever writes the database: verification alone
    then passes, a head hash kept outside (``expect``) does not; HMAC mode prevents it."""
    _append(engine, PLAIN, 6)
    kept = (6, head(engine)["last_hash"])
    previous = _row(engine, 2).hash
    for seq in range(3, 7):  # rewrite record 3 and recompute every later hash and the head
        rec = AuditRecord.from_row(_row(engine, seq))
        fields = {**rec.hashed_fields(), "prev_hash": previous}
        if seq == 3:
            fields["actor"] = "key:999"
        previous = PLAIN.hash(fields, SHA256)
        values = {k: v for k, v in fields.items() if k not in ("at", "seq")}
        _sql(
            engine, audit_log.update().where(audit_log.c.seq == seq).values(**values, hash=previous)
        )
    _sql(engine, audit_chain.update().values(last_hash=previous))
    with engine.connect() as conn:
        assert verify(conn, PLAIN).problem is None  # undetectable from the database alone
        caught = verify(conn, PLAIN, expect=kept)
    assert caught.problem is not None
    assert caught.problem.seq == 6


def test_a_tail_cut_with_the_head_rewound_is_caught_by_a_kept_hash(engine: sa.Engine) -> None:
    _append(engine, HMAC, 6)
    kept = (6, head(engine)["last_hash"])
    _sql(
        engine,
        audit_log.delete().where(audit_log.c.seq >= 5),
        audit_chain.update().values(last_seq=4, last_hash=_row(engine, 4).hash),
    )
    with engine.connect() as conn:
        assert verify(conn, HMAC).problem is None
        caught = verify(conn, HMAC, expect=kept)
    assert caught.problem is not None
    assert (caught.problem.seq, caught.problem.kind) == (6, "missing")


# -- pruning -----------------------------------------------------------------------------------


def test_pruning_keeps_the_rest_verifiable(engine: sa.Engine) -> None:
    _append(engine, HMAC, 6)
    future = datetime.now(UTC) + timedelta(days=1)
    result = run_write(engine, lambda conn: prune(conn, HMAC, before=future, limit=3))
    assert result is not None
    assert (result.from_seq, result.through_seq) == (1, 3)
    stored = rows(engine)
    assert [r["seq"] for r in stored] == [4, 5, 6, 7]
    assert stored[-1]["action"] == "audit.prune"
    assert orjson.loads(stored[-1]["details"])["through_seq"] == 3
    assert (head(engine)["anchor_seq"], head(engine)["anchor_hash"]) == (3, result.anchor_hash)
    with engine.connect() as conn:
        report = verify(conn, HMAC)
    assert report.intact
    assert report.first_seq == 4


def test_records_pruned_without_a_prune_record_are_reported(engine: sa.Engine) -> None:
    _append(engine, HMAC, 6)
    future = datetime.now(UTC) + timedelta(days=1)
    run_write(engine, lambda conn: prune(conn, HMAC, before=future, limit=2))
    # Deleting more and moving the anchor to match hides the gap from the numbering...
    _sql(
        engine,
        audit_log.delete().where(audit_log.c.seq <= 4),
        audit_chain.update().values(anchor_seq=4, anchor_hash=_row(engine, 4).hash),
    )
    with engine.connect() as conn:
        report = verify(conn, HMAC)
    # ...but not from the prune record, which says it pruned up to 2 only.
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (4, "anchor")


def test_retention_prunes_only_expired_records(engine: sa.Engine) -> None:
    _append(engine, PLAIN, 5)
    keep_all = AuditSettings(retention_days=30)
    assert prune_expired(engine, PLAIN, AuditSettings()) == 0  # unset: kept forever
    assert prune_expired(engine, PLAIN, keep_all) == 0
    later = datetime.now(UTC) + timedelta(days=31)
    assert prune_expired(engine, PLAIN, keep_all, now=later, batch=2) == 5
    stored = rows(engine)
    assert [r["action"] for r in stored] == ["audit.prune"] * 3  # one per batch of 2, 2, 1
    assert {r["actor"] for r in stored} == {"system:audit-retention"}
    with engine.connect() as conn:
        assert verify(conn, PLAIN).intact


# -- what may be recorded ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actor": "alice"}, "actor"),
        ({"actor": "key:1 2"}, "actor"),
        ({"action": "Prompt Push"}, "action"),
        ({"details": {"api_secret": "x"}}, "looks like a secret"),
        ({"details": {"password_hash": "x"}}, "looks like a secret"),
        ({"details": {"text": "x" * 301}}, "over 300"),
        ({"details": {"nested": {"a": 1}}}, "string, number"),
        ({"object_id": ""}, "object id"),
    ],
)
def test_malformed_events_are_refused_and_nothing_is_written(
    engine: sa.Engine, change: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {
        "actor": "key:1",
        "action": "prompt.push",
        "object_type": "prompt",
        "object_id": "p",
        **change,
    }
    with pytest.raises(ValueError, match=message), engine.begin() as conn:
        record(conn, AuditEvent(**fields), chain=PLAIN)
    assert rows(engine) == []


def test_the_secret_is_never_shown_and_must_be_configured_fully() -> None:
    assert SECRET not in repr(HMAC)
    assert repr(HMAC) == "AuditChain(mode='hmac-sha256')"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(HMAC)
    settings = AuditSettings(secret_env=SECRET_ENV)
    with pytest.raises(AuditConfigError, match=f"{SECRET_ENV}, which is not set"):
        AuditChain.from_settings(settings, environ={})
    with pytest.raises(AuditConfigError, match="at least 32 characters") as short:
        AuditChain.from_settings(settings, environ={SECRET_ENV: "too-short"})
    assert "too-short" not in str(short.value)
    assert AuditChain.from_settings(settings, environ={SECRET_ENV: SECRET}).mode == HMAC_SHA256
    assert AuditChain.from_settings(AuditSettings()).mode == SHA256
