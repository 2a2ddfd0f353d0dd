"""``bastion approvals``: list, show, approve and reject approvals (directly on the database).

Approving or rejecting is done as a person: ``--as NAME`` and that user's password (asked for,
hidden, or read from standard input), checked like a sign-in; the decision is recorded as
``user:NAME`` and held to the same rules as through the API (the policy's role, never the
person who asked). A user who signs in only through single sign-on decides through the API.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from bastion.approvals import (
    Approval,
    ApprovalError,
    Decider,
    Status,
    decide,
    get_approval,
    list_approvals,
    policy_of,
    ttl_of,
)
from bastion.audit import AuditTrail
from bastion.auth import DEFAULT_PROJECT
from bastion.auth.memberships import memberships_of
from bastion.auth.passwords import verify_password, waste_a_verification
from bastion.cli.common import (
    ConfigOption,
    audit_trail,
    echo_json,
    fail,
    load,
    read_local,
    run_local,
)
from bastion.settings import Settings
from bastion.store.schema import users
from bastion.store.transactions import run_write

__all__ = ["app"]

app = typer.Typer(
    help="Approvals of the changes a project's policy governs (projects.<slug>.approvals).",
    no_args_is_help=True,
)
console = Console()

ProjectOption = Annotated[str, typer.Option("--project", "-p", help="the project")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]
IdArgument = Annotated[str, typer.Argument(help="the approval's id")]
AsOption = Annotated[str, typer.Option("--as", help="the user deciding (asked for a password)")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="why")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="read the password from the first line of standard input"
    ),
]


def _doc(approval: Approval, settings: Settings, project: str) -> dict[str, Any]:
    return approval.to_dict(datetime.now(UTC), ttl_of(policy_of(settings, project)))


@app.command("list")
def list_(
    project: ProjectOption = DEFAULT_PROJECT,
    status: Annotated[
        Status | None, typer.Option(help="pending, approved, rejected, used or expired")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the project's approvals, newest first."""
    settings = load(config)
    ttl = ttl_of(policy_of(settings, project))
    found = read_local(
        config,
        project,
        lambda conn, pid: list_approvals(conn, pid, status=status, ttl=ttl, limit=limit),
        create=False,
    )
    docs = [_doc(a, settings, project) for a in found]
    if as_json:
        echo_json(docs)
        return
    table = Table("id", "change", "object", "status", "requested by", "decided by", "created")
    for d in docs:
        table.add_row(
            d["id"],
            d["action"],
            d["object"],
            d["status"],
            d["requested_by"],
            d["decided_by"] or "",
            d["created_at"][:19].replace("T", " "),
        )
    console.print(table)


@app.command("show")
def show(
    approval_id: IdArgument,
    project: ProjectOption = DEFAULT_PROJECT,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one approval: the change it is bound to and what it would change."""
    settings = load(config)
    found = read_local(
        config,
        project,
        lambda conn, pid: get_approval(conn, pid, approval_id),
        create=False,
        expected=(ApprovalError,),
    )
    doc = _doc(found, settings, project)
    if as_json:
        echo_json(doc)
        return
    for key in ("id", "action", "object", "status", "requested_by", "reason", "change_hash"):
        console.print(f"[bold]{key.replace('_', ' ')}:[/bold] {doc[key]}", highlight=False)
    if doc["decided_by"]:
        console.print(f"[bold]decided by:[/bold] {doc['decided_by']} ({doc['decision_reason']})")
    console.print("[bold]binding:[/bold]", highlight=False)
    echo_json(doc["change"].get("binding"))
    diff = doc["change"].get("diff")
    if isinstance(diff, str):
        console.print(diff, highlight=False, markup=False)
    elif diff is not None:
        echo_json(diff)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    typed: str = typer.prompt("Password", hide_input=True)
    return typed


def _decider(engine: sa.Engine, name: str, password: str, project_id: int) -> Decider:
    """The person deciding, once their password is checked; one answer for every refusal."""
    name = name.lower()
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(users.c.id, users.c.password_hash, users.c.disabled).where(
                users.c.name == name
            )
        ).first()
        roles = {} if row is None else {m.project_id: m.role for m in memberships_of(conn, row.id)}
    if row is None or row.password_hash is None:
        waste_a_verification(password)
        raise fail(f"cannot decide as {name!r}: wrong user name or password")
    if not verify_password(row.password_hash, password) or row.disabled:
        raise fail(f"cannot decide as {name!r}: wrong user name or password")
    role = roles.get(project_id)
    if role is None:
        raise fail(f"{name!r} has no role in this project")
    return Decider(f"user:{name}", role)


def _decide(
    approval_id: str, approve: bool, person: str, reason: str | None, from_stdin: bool,
    project: str, config: ConfigOption,
) -> dict[str, Any]:  # fmt: skip
    settings = load(config)
    password = _password(from_stdin)
    policy = policy_of(settings, project)

    def work(engine: sa.Engine, project_id: int) -> Approval:
        decider = _decider(engine, person, password, project_id)
        trail: AuditTrail = audit_trail(settings).acting_as(decider.actor)

        def change(conn: sa.Connection) -> Approval:
            return decide(
                conn,
                project_id,
                approval_id,
                approve=approve,
                decider=decider,
                policy=policy,
                project=project,
                reason=reason,
                audit=trail,
            )

        return run_write(engine, change)

    approval = run_local(config, project, work, create=False, expected=(ApprovalError,))
    return _doc(approval, settings, project)


@app.command("approve")
def approve(
    approval_id: IdArgument,
    person: AsOption,
    reason: ReasonOption = None,
    password_stdin: PasswordStdinOption = False,
    project: ProjectOption = DEFAULT_PROJECT,
    config: ConfigOption = None,
) -> None:
    """Approve a pending approval as a person with the policy's role (not the one who asked)."""
    doc = _decide(approval_id, True, person, reason, password_stdin, project, config)
    console.print(
        f"approved {doc['id']} ({doc['action']} {doc['object']}): it can be used once, until "
        f"{doc['expires_at'][:19].replace('T', ' ')} UTC",
        highlight=False,
    )


@app.command("reject")
def reject(
    approval_id: IdArgument,
    person: AsOption,
    reason: ReasonOption = None,
    password_stdin: PasswordStdinOption = False,
    project: ProjectOption = DEFAULT_PROJECT,
    config: ConfigOption = None,
) -> None:
    """Reject a pending approval (or, as the person who asked, withdraw it)."""
    doc = _decide(approval_id, False, person, reason, password_stdin, project, config)
    console.print(f"rejected {doc['id']} ({doc['action']} {doc['object']})", highlight=False)
