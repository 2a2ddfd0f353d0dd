"""``bastion users``: people who sign in, their passwords and their role in each project
(directly on the database).

Changes made here reach running servers within ``auth.session_cache_s`` seconds: disabling a
user or resetting a password ends their sessions in the database at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from bastion.audit import AuditTrail
from bastion.auth import DEFAULT_PROJECT
from bastion.auth.passwords import WeakPassword
from bastion.auth.roles import PersonRole
from bastion.auth.users import (
    User,
    UserError,
    create_user,
    list_users,
    set_disabled,
    set_password,
    set_role,
)
from bastion.cli.common import ConfigOption, audit_trail, fail, load, local_engine
from bastion.store.transactions import run_write

__all__ = ["app"]

app = typer.Typer(
    help="People who sign in (passwords are stored as argon2id hashes only).",
    no_args_is_help=True,
)
console = Console()

NameArgument = Annotated[str, typer.Argument(help="the user name (lower-case)")]
ProjectOption = Annotated[str, typer.Option("--project", "-p", help="the project of the role")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="read the password from the first line of standard input"
    ),
]


def _read_password(from_stdin: bool) -> str:
    """The new password: from stdin, or typed twice at a hidden prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise fail("no password on standard input")
        return password
    typed: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return typed


def _on_database(config: ConfigOption, work: Callable[[sa.Connection, AuditTrail], User]) -> User:
    """``work(conn, trail)`` in one write transaction, recording its change with the command
    line's audit trail; a refused change is printed, exit 1."""
    settings = load(config)
    trail = audit_trail(settings)
    with local_engine(settings) as engine:
        try:
            return run_write(engine, lambda conn: work(conn, trail))
        except (UserError, WeakPassword) as exc:
            raise fail(str(exc)) from exc


def _roles(user: User) -> str:
    return ", ".join(f"{m.project_slug}:{m.role.value}" for m in user.memberships) or "-"


@app.command("create")
def create(
    name: NameArgument,
    role: Annotated[
        PersonRole, typer.Option(help="owner, admin, member or viewer")
    ] = PersonRole.MEMBER,
    project: ProjectOption = DEFAULT_PROJECT,
    email: Annotated[str | None, typer.Option(help="the user's e-mail address")] = None,
    password_stdin: PasswordStdinOption = False,
    config: ConfigOption = None,
) -> None:
    """Create a user with a role in one project; the password is asked for twice, hidden."""
    password = _read_password(password_stdin)
    user = _on_database(
        config,
        lambda conn, trail: create_user(
            conn, name, password=password, role=role, project=project, email=email, audit=trail
        ),
    )
    console.print(f"created user [bold]{user.name}[/bold] ({_roles(user)})", highlight=False)


@app.command("list")
def list_(config: ConfigOption = None) -> None:
    """List users with their roles."""
    settings = load(config)
    with local_engine(settings) as engine, engine.connect() as conn:
        rows = list_users(conn)
    table = Table("id", "name", "e-mail", "roles", "sign-in", "status", "created")
    for user in rows:
        table.add_row(
            str(user.id),
            user.name,
            user.email or "",
            _roles(user),
            "sso" if user.sso else "password",
            "disabled" if user.disabled else "active",
            user.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("disable")
def disable(name: NameArgument, config: ConfigOption = None) -> None:
    """Disable a user and end all their sessions at once."""
    user = _on_database(config, lambda conn, trail: set_disabled(conn, name, True, audit=trail))
    console.print(f"disabled user {user.name}; their sessions are ended", highlight=False)


@app.command("enable")
def enable(name: NameArgument, config: ConfigOption = None) -> None:
    """Enable a disabled user again."""
    user = _on_database(config, lambda conn, trail: set_disabled(conn, name, False, audit=trail))
    console.print(f"enabled user {user.name}", highlight=False)


@app.command("reset-password")
def reset_password(
    name: NameArgument, password_stdin: PasswordStdinOption = False, config: ConfigOption = None
) -> None:
    """Set a new password (asked for twice, hidden) and end the user's sessions."""
    password = _read_password(password_stdin)
    user = _on_database(config, lambda conn, trail: set_password(conn, name, password, audit=trail))
    console.print(f"new password set for {user.name}; their sessions are ended", highlight=False)


@app.command("set-role")
def set_role_(
    name: NameArgument,
    role: Annotated[PersonRole, typer.Argument(help="owner, admin, member or viewer")],
    project: ProjectOption = DEFAULT_PROJECT,
    config: ConfigOption = None,
) -> None:
    """Give a user a role in a project (replacing the role they had there)."""
    user = _on_database(
        config, lambda conn, trail: set_role(conn, name, role, project, audit=trail)
    )
    console.print(f"{user.name}: {_roles(user)}", highlight=False)
