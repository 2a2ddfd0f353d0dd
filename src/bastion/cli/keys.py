"""``bastion keys``: create, list and revoke project API keys (directly on the database)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bastion.auth import DEFAULT_PROJECT, Role, key_changes, list_keys
from bastion.cli.common import ConfigOption, audit_trail, load, local_engine

app = typer.Typer(
    help="Project API keys (only a hash is stored; a key is shown once).", no_args_is_help=True
)
console = Console()

ProjectOption = Annotated[str, typer.Option("--project", "-p", help="project name")]


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="a label for the key")] = "default",
    project: ProjectOption = DEFAULT_PROJECT,
    role: Annotated[Role, typer.Option(help="admin, write, ingest or read")] = Role.ADMIN,
    config: ConfigOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the key")] = False,
) -> None:
    """Create a key; the full key is printed once and never stored."""
    settings = load(config)
    trail = audit_trail(settings)
    with local_engine(settings) as engine, engine.begin() as conn:
        try:
            created = key_changes.create(conn, project, name=name, role=role, audit=trail)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--project") from exc
    if quiet:
        typer.echo(created.secret)
        return
    console.print(f"created key {created.key.id} ({role.value}) in project [bold]{project}[/bold]:")
    console.print(created.secret, soft_wrap=True, highlight=False)
    console.print("[dim]store it now: it cannot be shown again[/dim]")


@app.command("list")
def list_(
    project: Annotated[str | None, typer.Option("--project", "-p")] = None,
    config: ConfigOption = None,
) -> None:
    """List keys (their prefixes only)."""
    settings = load(config)
    with local_engine(settings) as engine, engine.connect() as conn:
        rows = list_keys(conn, project)
    table = Table("id", "project", "name", "prefix", "role", "created", "revoked")
    for k in rows:
        table.add_row(
            str(k.id),
            k.project_slug,
            k.name,
            k.prefix + "…",
            k.role.value,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[int, typer.Argument(help="the key's id (see keys list)")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key; running servers stop accepting it within seconds."""
    settings = load(config)
    trail = audit_trail(settings)
    with local_engine(settings) as engine, engine.begin() as conn:
        done = key_changes.revoke(conn, key_id, audit=trail)
    if not done:
        console.print(f"[red]no live key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked key {key_id}")
