"""``bastion demo`` makes the first owner once, and the login it prints works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from bastion.auth.passwords import check_strength, verify_password
from bastion.store.schema import memberships, users

_LOGIN = re.compile(r"name=(\S+)\s+password=(\S+)")


def _demo(home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "demo", "--exit"],
        env={**env, "BASTION_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_demo_creates_the_first_owner_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    found = _LOGIN.search(_demo(home))
    assert found is not None
    name, password = found.groups()
    check_strength(name, password)
    engine = sa.create_engine(f"sqlite:///{home / 'bastion.db'}")
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(users.c.password_hash, memberships.c.role)
                .join(memberships, memberships.c.user_id == users.c.id)
                .where(users.c.name == name)
            ).one()
        assert row.role == "owner"
        assert verify_password(row.password_hash, password)
        # A second run finds the owner and creates no one.
        assert _LOGIN.search(_demo(home)) is None
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 1
    finally:
        engine.dispose()
