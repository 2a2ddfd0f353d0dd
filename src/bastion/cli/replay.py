"""``bastion replay``: re-run recorded production inputs against a candidate release."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console

from bastion.cli.common import ConfigOption, errors, fail, load, read_local
from bastion.cli.traces import ProjectOption

__all__ = ["replay"]

console = Console()


def replay(
    from_traces: Annotated[
        str,
        typer.Option(
            "--from-traces",
            help="trace filter: since=24h,feature=F,user=U,model=M,error=CLASS,prompt=NAME[@V],"
            "limit=N,sample=0.5",
        ),
    ],
    candidate: Annotated[str, typer.Option(help="release id, prefix or name")],
    gateway: Annotated[
        str | None,
        typer.Option(envvar="BASTION_URL", help="gateway to call (default: the configured one)"),
    ] = None,
    key: Annotated[str | None, typer.Option(envvar="BASTION_API_KEY", help="API key")] = None,
    scorer: Annotated[
        list[str] | None,
        typer.Option(help="reference scorer type comparing with production (repeatable)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the Markdown report here")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Replay production inputs (from the local store) through the gateway, shaped by a
    candidate release, and compare its answers with the recorded ones."""
    from bastion.evals.datasets import Item
    from bastion.evals.scorers import ScorerError, make_scorer
    from bastion.releases import ReleaseError, ReleaseSpecError
    from bastion.releases.replay import load_items, parse_filter, render_markdown, run_replay
    from bastion.releases.store import ReleaseInfo, get_release

    if not key:
        raise typer.BadParameter("give --key (or BASTION_API_KEY): the gateway needs a key")
    settings = load(config)
    url = gateway or f"http://{settings.host}:{settings.port}"
    try:
        selection = parse_filter(from_traces)
        scorers = [make_scorer({"type": kind}) for kind in (scorer or ["levenshtein"])]
    except (ReleaseSpecError, ScorerError) as exc:
        raise fail(str(exc), 2) from exc

    def work(conn: sa.Connection, project_id: int) -> tuple[ReleaseInfo, list[Item]]:
        return get_release(conn, project_id, candidate), load_items(conn, project_id, selection)

    info, items = read_local(config, project, work, create=False, expected=(ReleaseError,))
    if not items:
        errors.print("[yellow]no recorded inputs match the filter: nothing to replay[/yellow]")
        raise typer.Exit(1)
    results = asyncio.run(run_replay(url, key, info.spec, items, scorers, concurrency=concurrency))
    report = render_markdown(info.release_id, info.spec, selection, results)
    if out is not None:
        out.write_text(report, encoding="utf-8")
        console.print(f"report written to {out}")
    else:
        typer.echo(report)
    failed = sum(1 for r in results if r.error is not None)
    console.print(f"{len(results)} inputs replayed against {info.release_id}, {failed} errors")
