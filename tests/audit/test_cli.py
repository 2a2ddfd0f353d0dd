"""``bastion audit`` and the audited ``bastion keys``, run as a user runs them."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bastion.store.engine import create_engine
from bastion.store.schema import audit_log
from tests.audit.support import SECRET, SECRET_ENV


def bastion(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    clean.pop(SECRET_ENV, None)
    return {
        **clean,
        "BASTION_HOME": str(tmp_path / "home"),
        "BASTION_DATABASE_URL": db_url,
        "COLUMNS": "200",
    }


def _keyed(env: dict[str, str]) -> dict[str, str]:
    return {**env, "BASTION_AUDIT__SECRET_ENV": SECRET_ENV, SECRET_ENV: SECRET}


def _edit(db_url: str, seq: int) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(actor="key:1"))
    engine.dispose()


def test_cli_changes_are_audited_and_the_chain_verifies(env: dict[str, str], db_url: str) -> None:
    keyed = _keyed(env)
    created = bastion("keys", "create", "--name", "ci", "--quiet", env=keyed)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert bastion("keys", "create", "--project", "other", "--quiet", env=keyed).returncode == 0
    assert bastion("keys", "revoke", "1", env=keyed).returncode == 0
    listed = bastion("audit", "list", "--json", env=env)
    records = [orjson.loads(line) for line in listed.stdout.splitlines()]
    actor = f"system:cli:{getpass.getuser()}"
    assert [(r["actor"], r["action"], r["object_id"]) for r in records] == [
        (actor, "key.revoke", "1"), (actor, "key.create", "2"), (actor, "key.create", "1")
    ]  # fmt: skip
    assert {r["hash_mode"] for r in records} == {"hmac-sha256"}
    other = bastion("audit", "list", "--json", "--project", "other", env=env).stdout.splitlines()
    assert [orjson.loads(line)["object_id"] for line in other] == ["2"]
    revokes = bastion("audit", "list", "--action", "key.rev*", env=env).stdout
    assert "key.revoke" in revokes
    assert "key.create" not in revokes
    # Intact with the secret; not checkable without it (exit 2); refused when it is named but unset.
    intact = bastion("audit", "verify", env=keyed)
    assert intact.returncode == 0, intact.stderr
    assert "records 1 to 3" in intact.stdout
    blind = bastion("audit", "verify", env=env)
    assert blind.returncode == 2
    assert "cannot be checked without the audit secret" in blind.stderr
    unset = bastion("audit", "verify", env={**keyed, SECRET_ENV: ""})
    assert unset.returncode == 1
    assert f"{SECRET_ENV}, which is not set" in unset.stderr
    for output in (listed, intact, blind, unset):
        assert secret not in output.stdout + output.stderr
        assert SECRET not in output.stdout + output.stderr
    # A record edited in the database is named.
    _edit(db_url, 2)
    broken = bastion("audit", "verify", env=keyed)
    assert broken.returncode == 1
    assert "record 2 was changed" in broken.stderr


def test_export_prune_and_a_kept_head(env: dict[str, str], tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        assert bastion("keys", "create", "--name", name, "--quiet", env=env).returncode == 0
    verified = bastion("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    expect = verified.stdout.split("--expect ", 1)[1].split()[0]
    assert expect.startswith("3:")
    out = tmp_path / "audit.jsonl"
    exported = bastion("audit", "export", "--jsonl", "--output", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3]
    assert lines[-1]["hash"] == expect.split(":")[1]
    stdout = bastion("audit", "export", "--jsonl", "--action", "key.create", env=env).stdout
    assert len(stdout.splitlines()) == 3
    nothing = bastion("audit", "prune", env=env)
    assert nothing.returncode == 1
    assert "set audit.retention_days or pass --before" in nothing.stderr
    pruned = bastion("audit", "prune", "--before", "2200-01-01T00:00:00+00:00", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 3 audit records" in pruned.stdout
    after = bastion("audit", "verify", env=env)
    assert after.returncode == 0, after.stderr
    assert "records up to 3 were pruned" in after.stdout
    # The record kept by the earlier verify is gone: named, not silently accepted.
    kept = bastion("audit", "verify", "--expect", expect, env=env)
    assert kept.returncode == 1
    assert "record 3 you kept was pruned" in kept.stderr
    bad = bastion("audit", "verify", "--expect", "3:abc", env=env)
    assert bad.returncode == 2
    assert "SEQ:HASH" in bad.stderr


def test_a_chain_edited_through_sql_fails_verify_on_the_first_edit(
    env: dict[str, str], db_url: str
) -> None:
    for name in ("a", "b", "c", "d"):
        assert bastion("keys", "create", "--name", name, "--quiet", env=env).returncode == 0
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(audit_log.delete().where(audit_log.c.seq == 2))
        conn.execute(sa.text("UPDATE audit_log SET reason = 'x' WHERE seq = 3"))
    engine.dispose()
    broken = bastion("audit", "verify", env=env)
    assert broken.returncode == 1
    assert "record 2 is missing" in broken.stderr
