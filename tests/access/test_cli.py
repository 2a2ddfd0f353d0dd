"""``bastion approvals`` and the audited ``bastion users``, run as an operator runs them, on
SQLite and PostgreSQL: deciding as a person proven by their password, under the same rules as
the API; every change to a person recorded, without the password."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bastion.approvals import ApprovalAction, Change, request_approval, ttl_of
from bastion.audit import AuditChain, AuditTrail
from bastion.auth import ensure_project
from bastion.settings import ApprovalPolicy
from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.schema import approvals, audit_log

PASSWORD = "correct horse battery staple"
POLICY = """projects:
  default:
    approvals:
      protected_labels: [production]
      label_move: {approver_role: admin}
"""


def bastion(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "bastion.yaml").write_text(POLICY, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    return {**clean, "BASTION_HOME": str(home), "BASTION_DATABASE_URL": db_url, "COLUMNS": "200"}


def _pending(db_url: str) -> str:
    """A pending approval of a label move, asked by ada."""
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    binding = {"prompt": "greeting", "label": "production", "from_version": 1, "to_version": 2}
    change = Change(ApprovalAction.LABEL_MOVE, "greeting:production", binding, {"diff": "-a\n+b"})
    with engine.begin() as conn:
        approval = request_approval(
            conn,
            ensure_project(conn),
            change,
            requested_by="user:ada",
            reason="fix",
            ttl=ttl_of(ApprovalPolicy()),
            audit=AuditTrail(AuditChain(), "user:ada"),
        )
    engine.dispose()
    return approval.id


def _audit(db_url: str) -> list[tuple[str, str, str | None]]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.action, audit_log.c.details).order_by(
                audit_log.c.seq
            )
        ).all()
    engine.dispose()
    return [(r.actor, r.action, r.details) for r in rows]


def test_approvals_are_decided_as_a_person_proven_by_password(
    env: dict[str, str], db_url: str
) -> None:
    for name, role in (("ada", "member"), ("alan", "admin"), ("mia", "member")):
        made = bastion(
            "users", "create", name, "--role", role, "--password-stdin", env=env, stdin=PASSWORD
        )
        assert made.returncode == 0, made.stderr
    approval_id = _pending(db_url)
    listed = bastion("approvals", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [a["status"] for a in orjson.loads(listed.stdout)] == ["pending"]
    shown = bastion("approvals", "show", approval_id, env=env)
    assert '"to_version": 2' in shown.stdout
    assert "+b" in shown.stdout

    def approve(person: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        return bastion(
            "approvals", "approve", approval_id, "--as", person, "--password-stdin",
            env=env, stdin=password,
        )  # fmt: skip

    own = approve("ada")
    assert own.returncode == 1
    assert "a second person must approve" in own.stderr
    low = approve("mia")
    assert low.returncode == 1
    assert "needs the role 'admin'" in low.stderr
    wrong = approve("alan", "not the password at all")
    assert wrong.returncode == 1
    assert "wrong user name or password" in wrong.stderr
    done = approve("alan")
    assert done.returncode == 0, done.stderr
    assert "approved" in done.stdout
    again = bastion(
        "approvals", "reject", approval_id, "--as", "alan", "--password-stdin",
        env=env, stdin=PASSWORD,
    )  # fmt: skip
    assert again.returncode == 1
    assert "is approved: it cannot be decided" in again.stderr
    decisions = [(a, b) for a, b, _ in _audit(db_url) if b.startswith("approval.")]
    assert decisions == [("user:ada", "approval.request"), ("user:alan", "approval.approve")]
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(approvals.c.decided_by)).scalar() == "user:alan"
    engine.dispose()
    unknown = bastion("approvals", "show", "f" * 32, env=env)
    assert unknown.returncode == 1
    assert "no approval" in unknown.stderr


def test_every_change_to_a_person_is_audited_without_the_password(
    env: dict[str, str], db_url: str
) -> None:
    steps = [
        (("users", "create", "ada", "--role", "member", "--password-stdin"), PASSWORD),
        (("users", "set-role", "ada", "admin"), ""),
        (("users", "set-role", "ada", "viewer", "--project", "research"), ""),
        (("users", "set-role", "ada", "admin"), ""),  # no change: no record
        (("users", "disable", "ada"), ""),
        (("users", "enable", "ada"), ""),
        (("users", "reset-password", "ada", "--password-stdin"), "another long passphrase"),
    ]
    for args, stdin in steps:
        done = bastion(*args, env=env, stdin=stdin)
        assert done.returncode == 0, (args, done.stderr)
    records = _audit(db_url)
    assert [action for _, action, _ in records] == [
        "user.create", "user.set_role", "user.set_role", "user.disable", "user.enable",
        "user.reset_password",
    ]  # fmt: skip
    assert {actor for actor, _, _ in records} == {f"system:cli:{getpass.getuser()}"}
    roles = [orjson.loads(d or "{}") for _, action, d in records if action == "user.set_role"]
    assert [(r["previous_role"], r["role"]) for r in roles] == [
        ("member", "admin"),
        (None, "viewer"),
    ]
    engine = create_engine(db_url)
    with engine.connect() as conn:
        stored = "\n".join(str(row) for row in conn.execute(sa.select(audit_log)).all())
    engine.dispose()
    assert PASSWORD not in stored
    assert "another long passphrase" not in stored
    assert "argon2" not in stored
