"""``bastion traces``: list and show traces, from a running server or straight from the store."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from bastion.cli.common import ConfigOption, api_call, load, local_engine

app = typer.Typer(help="Read traces.", no_args_is_help=True)
console = Console()

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="BASTION_URL", help="server to ask (default: read the local store)"
    ),
]
KeyOption = Annotated[
    str | None, typer.Option("--key", envvar="BASTION_API_KEY", help="API key for --url")
]


def _project_name(value: str) -> str:
    """``--project`` as a valid project name (``bastion.names``), else a usage error (exit 2)."""
    from bastion.names import PROJECT, InvalidName

    try:
        return PROJECT.check(value)
    except InvalidName as exc:
        raise typer.BadParameter(str(exc)) from exc


ProjectOption = Annotated[
    str,
    typer.Option("--project", "-p", help="project (local store only)", callback=_project_name),
]


def _since(value: str | None) -> datetime | None:
    """``30m``, ``24h``, ``7d`` or an ISO time."""
    if not value:
        return None
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if value[-1] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: use 30m, 24h, 7d or an ISO 8601 time") from exc


def _project_id(engine: Any, project: str) -> int:
    import sqlalchemy as sa

    from bastion.store.schema import projects

    with engine.connect() as conn:
        found = conn.execute(sa.select(projects.c.id).where(projects.c.slug == project)).scalar()
    if found is None:
        console.print(f"[red]no project {project!r}[/red]")
        raise typer.Exit(1)
    return int(found)


def _money(value: float | None) -> str:
    return "?" if value is None else f"${value:.4f}"


@app.command("list")
def list_(
    since: Annotated[str | None, typer.Option(help="30m, 24h, 7d or an ISO time")] = None,
    user: Annotated[str | None, typer.Option()] = None,
    session: Annotated[str | None, typer.Option()] = None,
    feature: Annotated[str | None, typer.Option()] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    text: Annotated[
        str | None, typer.Option("--text", "-q", help="text in an input or output")
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option("--request-id", help="the x-request-id the gateway answered with"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List traces, newest first."""
    start = _since(since)
    params: dict[str, Any] = {
        "start": start.isoformat() if start else None,
        "user": user,
        "session": session,
        "feature": feature,
        "tenant": tenant,
        "model": model,
        "status": status,
        "q": text,
        "request_id": request_id,
        "limit": limit,
    }
    if url:
        page = api_call(
            url, key or os.environ.get("BASTION_API_KEY"), "GET", "/api/v1/traces", params=params
        )
    else:
        from bastion.store import queries

        settings = load(config)
        with local_engine(settings) as engine:
            flt = queries.TraceFilter(
                start_ns=int(start.timestamp() * 1e9) if start else None,
                user_id=user,
                session_id=session,
                feature=feature,
                tenant=tenant,
                model=model,
                status=status,
                text=text,
                request_id=request_id,
            )
            with engine.connect() as conn:
                page = queries.list_traces(
                    conn, _project_id(engine, project), flt, limit=limit
                ).model_dump(mode="json")
    if as_json:
        typer.echo(orjson.dumps(page, option=orjson.OPT_INDENT_2).decode())
        return
    _print_trace_page(page)


def _print_trace_page(page: dict[str, Any]) -> None:
    table = Table(
        "start", "trace", "name", "spans", "latency", "tokens", "cost", "user", "feature", "status"
    )
    for t in page["items"]:
        table.add_row(
            t["start_time"][:19].replace("T", " "),
            t["trace_id"][:12] + "…",
            t["name"] or "",
            str(t["span_count"]),
            f"{t['latency_ms']:.0f} ms",
            str(t["total_tokens"]),
            _money(t["cost_usd"]),
            t["user_id"] or "",
            t["feature"] or "",
            "[red]error[/red]" if t["status"] == "error" else "ok",
        )
    console.print(table)
    if page.get("next_cursor"):
        console.print("[dim]more traces: narrow with --since or raise --limit[/dim]")


def render_tree(tree: dict[str, Any]) -> Tree:
    """A Rich tree of a trace (as returned by ``GET /api/v1/traces/{id}``)."""
    summary = tree["trace"]
    root = Tree(
        f"[bold]{summary['name']}[/bold]  {summary['trace_id']}  {summary['latency_ms']:.0f} ms  "
        f"{summary['total_tokens']} tokens  {_money(summary['cost_usd'])}"
    )

    def add(parent: Tree, node: dict[str, Any]) -> None:
        label = f"{node['name']}  [dim]{node['latency_ms']:.1f} ms[/dim]"
        if node.get("duplicate_of"):
            label += f"  [dim]counted on gateway span {node['duplicate_of']}[/dim]"
        elif node.get("is_llm"):
            label += (
                f"  [cyan]{node.get('model') or '?'}[/cyan] {node.get('input_tokens') or 0}→"
                f"{node.get('output_tokens') or 0} tok {_money(node.get('cost_usd'))}"
            )
        if node["status"] == "error":
            label += f"  [red]{node.get('error_class') or 'error'}[/red]"
        branch = parent.add(label)
        for child in node.get("children", []):
            add(branch, child)

    for node in tree["roots"]:
        add(root, node)
    return root


@app.command("show")
def show(
    trace_id: Annotated[str, typer.Argument(help="the trace id (32 hex characters)")],
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show one trace as a tree of spans."""
    if url:
        tree = api_call(url, key, "GET", f"/api/v1/traces/{trace_id}")
    else:
        from bastion.store import queries

        settings = load(config)
        with local_engine(settings) as engine, engine.connect() as conn:
            found = queries.get_trace(conn, _project_id(engine, project), trace_id.lower())
        if found is None:
            console.print(f"[red]trace {trace_id} not found[/red]")
            raise typer.Exit(1)
        tree = found.model_dump(mode="json")
    if as_json:
        typer.echo(orjson.dumps(tree, option=orjson.OPT_INDENT_2).decode())
        return
    console.print(render_tree(tree))
