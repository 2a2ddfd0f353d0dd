"""``bastion audit``: list, verify, export and prune the audit log (directly on the database).

``verify`` exits 0 when the chain is intact, 1 naming the first record changed, deleted or
reordered (or a truncated tail), 2 when HMAC-keyed records cannot be checked because the audit
secret is not available here.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from bastion.cli.common import ConfigOption, audit_trail, errors, fail, load, local_engine

if TYPE_CHECKING:
    from datetime import datetime

    from bastion.audit import AuditFilter, VerifyReport

app = typer.Typer(
    help="The audit log: who changed what, hash-chained (list, verify, export, prune).",
    no_args_is_help=True,
)
console = Console()

EXIT_BROKEN = 1
EXIT_UNVERIFIED = 2

SinceOption = Annotated[
    str | None, typer.Option(help="records from this time: 30m, 24h, 7d ago or ISO 8601")
]
UntilOption = Annotated[str | None, typer.Option(help="records before this time (same forms)")]
ActorOption = Annotated[
    str | None, typer.Option(help="user:NAME, key:ID or system:COMPONENT; a trailing * matches")
]
ActionOption = Annotated[
    str | None, typer.Option(help="e.g. label.move, or rollout.* for every rollout action")
]
ObjectOption = Annotated[
    str | None, typer.Option("--object", help="TYPE or TYPE:ID, e.g. prompt:greeting")
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", help="one project's records (default: all)")
]


def _time(value: str | None, name: str) -> datetime | None:
    from bastion.prompts.registry_queries import RegistryError
    from bastion.prompts.usage import parse_since

    try:
        return parse_since(value, name=name)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{name}") from exc


def _filter(
    engine: sa.Engine,
    project: str | None,
    since: str | None,
    until: str | None,
    actor: str | None,
    action: str | None,
    object_: str | None,
) -> AuditFilter:
    from bastion.audit import AuditFilter
    from bastion.store.schema import projects

    project_id = None
    if project is not None:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(projects.c.id).where(projects.c.slug == project)
            ).scalar()
        if found is None:
            raise fail(f"no project {project!r}")
        project_id = int(found)
    return AuditFilter(
        project_id=project_id,
        since=_time(since, "since"),
        until=_time(until, "until"),
        actor=actor,
        action=action,
        object=object_,
    )


@app.command("list")
def list_(
    since: SinceOption = None,
    until: UntilOption = None,
    actor: ActorOption = None,
    action: ActionOption = None,
    object_: ObjectOption = None,
    project: ProjectOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
    config: ConfigOption = None,
) -> None:
    """List audit records, newest first."""
    from bastion.audit import list_records

    settings = load(config)
    with local_engine(settings) as engine:
        where = _filter(engine, project, since, until, actor, action, object_)
        with engine.connect() as conn:
            page = list_records(conn, where, limit=limit)
    if as_json:
        for rec in page.items:
            typer.echo(orjson.dumps(rec.to_dict()).decode())
        return
    table = Table("seq", "at (UTC)", "actor", "project", "action", "object", "reason")
    for rec in page.items:
        table.add_row(
            str(rec.seq),
            rec.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            rec.actor,
            "" if rec.project_id is None else str(rec.project_id),
            rec.action,
            f"{rec.object_type}:{rec.object_id}",
            (rec.reason or "")[:80],
        )
    console.print(table)
    if page.next_cursor is not None:
        console.print("[dim]older records exist: raise --limit or narrow --until[/dim]")


def _expect(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    seq, _, digest = value.partition(":")
    if not (seq.isascii() and seq.isdigit() and len(digest) == 64):
        raise typer.BadParameter(
            "give SEQ:HASH as printed by an earlier verify", param_hint="--expect"
        )
    return int(seq), digest.lower()


def _print_verified(report: VerifyReport) -> None:
    head = report.head
    if report.last_seq is None:
        console.print("audit log intact: no records yet")
        return
    hmac = f"; HMAC-keyed from record {report.hmac_since}" if report.hmac_since else ""
    console.print(
        f"audit log intact: records {report.first_seq} to {report.last_seq}, "
        f"{report.checked} hashes checked{hmac}",
        highlight=False,
    )
    if report.sha256_records and report.hmac_since:
        console.print(
            f"[yellow]{report.sha256_records} records before the audit secret was set are "
            "protected by plain SHA-256 only[/yellow]"
        )
    if head.anchor_seq:
        console.print(f"records up to {head.anchor_seq} were pruned", highlight=False)
    console.print(
        f"head: --expect {head.last_seq}:{head.last_hash} (keep it elsewhere to detect a "
        "rewritten or truncated log later)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def verify(
    expect: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH kept from an earlier verify: that record must be unchanged"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check the hash chain: exit 0 intact, 1 naming the first broken record, 2 unverifiable."""
    from bastion.audit import verify as verify_chain

    settings = load(config)
    chain = audit_trail(settings).chain
    expected = _expect(expect)
    with local_engine(settings) as engine, engine.connect() as conn:
        report = verify_chain(conn, chain, expect=expected)
    if report.problem is not None:
        errors.print(f"[red]audit log broken: {report.problem.message}[/red]", highlight=False)
        raise typer.Exit(EXIT_BROKEN)
    if report.unverifiable:
        errors.print(
            f"[yellow]{report.unverifiable} HMAC-keyed records cannot be checked without the "
            "audit secret: set the environment variable audit.secret_env names (numbering "
            "and links were checked)[/yellow]",
            highlight=False,
        )
        raise typer.Exit(EXIT_UNVERIFIED)
    _print_verified(report)


@app.command()
def export(
    jsonl: Annotated[bool, typer.Option("--jsonl", help="JSON lines (the only format)")] = True,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    actor: ActorOption = None,
    action: ActionOption = None,
    object_: ObjectOption = None,
    project: ProjectOption = None,
    config: ConfigOption = None,
) -> None:
    """Write audit records, oldest first, one JSON object a line (with their hashes)."""
    from bastion.audit import iter_records

    settings = load(config)
    count = 0
    with ExitStack() as stack:
        engine = stack.enter_context(local_engine(settings))
        where = _filter(engine, project, since, until, actor, action, object_)
        out = sys.stdout.buffer if output is None else stack.enter_context(output.open("wb"))
        conn = stack.enter_context(engine.connect())
        for rec in iter_records(conn, where):
            out.write(orjson.dumps(rec.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    if output is not None:
        errors.print(f"{count} audit records written to {output}", highlight=False)


@app.command()
def prune(
    before: Annotated[
        str | None,
        typer.Option(help="prune records before this time (default: audit.retention_days)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Delete the oldest audit records; what remains still verifies (from an anchor)."""
    from bastion.audit import prune_before, retention_cutoff

    settings = load(config)
    trail = audit_trail(settings)
    cutoff = _time(before, "before") if before else retention_cutoff(settings.audit)
    if cutoff is None:
        raise fail("nothing to prune: set audit.retention_days or pass --before")
    with local_engine(settings) as engine:
        pruned = prune_before(engine, trail.chain, cutoff, actor=trail.actor)
    console.print(f"pruned {pruned} audit records from before {cutoff.isoformat()}")
