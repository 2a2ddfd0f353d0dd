"""``bastion ingest rejects``: the spans the database refused, kept in the dead-letter store."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bastion.cli.common import ConfigOption, api_call, echo_json, read_local

app = typer.Typer(help="Ingestion: spans the database refused.", no_args_is_help=True)
console = Console()


def _cursor(value: str | None) -> str | None:
    if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise typer.BadParameter(f"{value!r}: use the next cursor a previous page printed")
    return value


@app.command("rejects")
def rejects(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="spans per page")] = 20,
    cursor: Annotated[
        str | None, typer.Option(callback=_cursor, help="the next cursor of a previous page")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="BASTION_URL", help="server to ask (default: read the local store)"
        ),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="BASTION_API_KEY", help="API key for --url")
    ] = None,
    project: Annotated[str, typer.Option("--project", "-p", help="project (local store only)")] = (
        "default"
    ),
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the spans the database refused, newest first, with the reason."""
    page: dict[str, Any]
    if url:
        page = api_call(
            url,
            key or os.environ.get("BASTION_API_KEY"),
            "GET",
            "/api/v1/ingest/rejects",
            params={"limit": limit, "cursor": cursor},
        )
    else:
        from bastion.store.dead_letters import list_rejects

        page = read_local(
            config,
            project,
            lambda conn, project_id: list_rejects(
                conn, project_id, limit=limit, cursor=cursor
            ).model_dump(mode="json"),
            create=False,
        )
    if as_json:
        echo_json(page)
        return
    table = Table("rejected", "trace", "span", "name", "reason", "error")
    for item in page["items"]:
        table.add_row(
            item["rejected_at"][:19].replace("T", " "),
            item["trace_id"],
            item["span_id"],
            str(item["record"].get("name", "")),
            item["reason"],
            f"{item['error_class']}: {item['message']}",
        )
    console.print(table)
    if not page["items"]:
        console.print("[dim]no refused spans[/dim]")
    if page.get("next_cursor"):
        console.print(f"[dim]more: --cursor {page['next_cursor']}[/dim]")
