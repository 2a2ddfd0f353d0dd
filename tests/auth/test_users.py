"""Users and their roles on both databases, through the functions and ``bastion users``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bastion.auth.passwords import WeakPassword, verify_password
from bastion.auth.roles import PersonRole
from bastion.auth.sessions import create_session, digest, load_session
from bastion.auth.users import (
    UserError,
    create_user,
    ensure_first_owner,
    find_user,
    has_owner,
    list_users,
    set_disabled,
    set_password,
    set_role,
)
from bastion.cli.main import app
from bastion.store.schema import user_sessions, users
from tests.auth.support import PASSWORD


def _session(conn: sa.Connection, user_id: int) -> str:
    made = create_session(conn, user_id, lifetime_s=3600, client_addr="::1", user_agent="t")
    return made.session_id


def test_create_find_list_and_roles(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ada = create_user(
            conn, "Ada", password=PASSWORD, role=PersonRole.ADMIN, email="ada@example.com"
        )
        assert ada.name == "ada"  # names are lower-case
        assert ada.email == "ada@example.com"
        assert [(m.project_slug, m.role) for m in ada.memberships] == [
            ("default", PersonRole.ADMIN)
        ]
        set_role(conn, "ADA", PersonRole.VIEWER, "research")
        set_role(conn, "ada", PersonRole.OWNER)  # replaces the admin role in default
        found = find_user(conn, "aDa")
        assert found is not None
        assert [(m.project_slug, m.role) for m in found.memberships] == [
            ("default", PersonRole.OWNER),
            ("research", PersonRole.VIEWER),
        ]
        assert [u.name for u in list_users(conn)] == ["ada"]
        stored = conn.execute(sa.select(users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert verify_password(stored, PASSWORD)


def test_refusals_name_the_problem_and_create_nothing(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        create_user(conn, "ada", password=PASSWORD, role=PersonRole.MEMBER)
    cases: list[tuple[str, str, type[Exception], str]] = [
        ("ADA", PASSWORD, UserError, "already exists"),
        ("bad name", PASSWORD, UserError, "invalid user name"),
        ("-rm", PASSWORD, UserError, "invalid user name"),
        ("x" * 201, PASSWORD, UserError, "invalid user name"),
        ("grace", "short", WeakPassword, "too short"),
        ("grace", "grace-hopper-1906", WeakPassword, "contains the user name"),
        ("grace", "qwertyuiop123", WeakPassword, "common password"),
    ]
    for name, password, error, message in cases:
        with pytest.raises(error, match=message), engine.begin() as conn:
            create_user(conn, name, password=password, role=PersonRole.MEMBER)
    with pytest.raises(UserError, match="project"), engine.begin() as conn:
        create_user(conn, "grace", password=PASSWORD, role=PersonRole.MEMBER, project="Bad Slug")
    with pytest.raises(UserError, match="e-mail"), engine.begin() as conn:
        create_user(conn, "grace", password=PASSWORD, role=PersonRole.MEMBER, email="nope")
    with engine.connect() as conn:
        assert [u.name for u in list_users(conn)] == ["ada"]


def test_disabling_and_new_passwords_end_every_session(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ada = create_user(conn, "ada", password=PASSWORD, role=PersonRole.MEMBER)
        first, second = _session(conn, ada.id), _session(conn, ada.id)
    with engine.connect() as conn:
        assert load_session(conn, digest(first), idle_s=60) is not None
    with engine.begin() as conn:
        set_disabled(conn, "ada", True)
    with engine.connect() as conn:
        assert load_session(conn, digest(first), idle_s=60) is None
        assert load_session(conn, digest(second), idle_s=60) is None
        revoked = conn.execute(
            sa.select(sa.func.count()).where(user_sessions.c.revoked_at.is_not(None))
        ).scalar_one()
    assert revoked == 2
    with engine.begin() as conn:
        set_disabled(conn, "ada", False)
        third = _session(conn, ada.id)
        with pytest.raises(WeakPassword):
            set_password(conn, "ada", "password")
        set_password(conn, "ada", "a brand new passphrase")
    with engine.connect() as conn:
        assert load_session(conn, digest(third), idle_s=60) is None
        stored = conn.execute(sa.select(users.c.password_hash)).scalar_one()
    assert verify_password(stored, "a brand new passphrase")


def test_the_first_owner_is_made_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        create_user(conn, "admin", password=PASSWORD, role=PersonRole.VIEWER)
        assert not has_owner(conn)
        made = ensure_first_owner(conn)
        assert made is not None
        name, password = made
        assert name == "admin2"  # "admin" is taken by a viewer
        assert has_owner(conn)
        assert ensure_first_owner(conn) is None
        stored = conn.execute(
            sa.select(users.c.password_hash).where(users.c.name == name)
        ).scalar_one()
    assert verify_password(stored, password)


# -- bastion users ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    return {
        **env,
        "BASTION_HOME": str(tmp_path / "home"),
        "BASTION_DATABASE_URL": db_url,
        "COLUMNS": "200",
    }


def _run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=stdin, env=env)
    return result.exit_code, result.output


def test_the_users_commands(cli_env: dict[str, str], db_url: str) -> None:
    code, out = _run(
        cli_env, "users", "create", "Ada", "--role", "owner", "--email", "ada@example.com",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, out
    assert "created user ada (default:owner)" in out
    # The hidden prompt asks twice; a mismatch is asked again, a weak password refused.
    code, out = _run(
        cli_env, "users", "create", "grace", "--role", "viewer", "-p", "research",
        stdin=f"{PASSWORD}\nsomething else\n{PASSWORD}\n{PASSWORD}\n",
    )  # fmt: skip
    assert code == 0, out
    assert PASSWORD not in out
    code, out = _run(cli_env, "users", "create", "weak", "--password-stdin", stdin="password\n")
    assert code == 1
    assert "too short" in out
    code, out = _run(cli_env, "users", "set-role", "grace", "member")
    assert code == 0, out
    assert "default:member, research:viewer" in out
    code, out = _run(cli_env, "users", "set-role", "grace", "superuser")
    assert code == 2
    code, out = _run(cli_env, "users", "disable", "grace")
    assert code == 0, out
    code, out = _run(
        cli_env, "users", "reset-password", "ada", "--password-stdin", stdin="ada-is-my-pass\n"
    )
    assert code == 1
    assert "contains the user name" in out
    code, out = _run(
        cli_env, "users", "reset-password", "ada", "--password-stdin", stdin="another fine phrase\n"
    )
    assert code == 0, out
    code, out = _run(cli_env, "users", "list")
    assert code == 0, out
    lines = {line.split("│")[2].strip(): line for line in out.splitlines() if "│" in line}
    assert "active" in lines["ada"]
    assert "ada@example.com" in lines["ada"]
    assert "disabled" in lines["grace"]
    code, out = _run(cli_env, "users", "enable", "nobody")
    assert code == 1
    assert "no user named 'nobody'" in out
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            hashes = conn.execute(sa.select(users.c.name, users.c.password_hash)).all()
    finally:
        engine.dispose()
    stored = dict(hashes)
    assert verify_password(stored["ada"], "another fine phrase")
    assert verify_password(stored["grace"], PASSWORD)
