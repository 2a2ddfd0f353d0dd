"""``bastion retention apply`` and ``bastion erase``: retention policies and erasure.

``retention apply`` runs what the server's retention job runs, once, on the local store:
``--dry-run`` counts what would go per project and kind, changing nothing. ``erase`` removes
one user's, session's or trace's data (and what was made from it) from a project, locally or
through a server's API (``--url``).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bastion.cli.common import (
    ConfigOption,
    actor,
    api_call,
    echo_json,
    fail,
    load,
    local_engine,
    run_local,
)

__all__ = ["app", "erase"]

app = typer.Typer(
    help="Retention: how long stored data is kept (retention: in bastion.yaml).",
    no_args_is_help=True,
)
console = Console()

ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", help="only this project (default: every one)")
]


def _report_table(report: dict[str, Any]) -> Table:
    dry = report["dry_run"]
    table = Table(
        "project", "kind", "kept (days)", "older than", "would go" if dry else "removed", "details"
    )
    for row in report["results"]:
        details = {
            k: v for k, v in row.items() if k not in ("project", "kind", "days", "cutoff", "rows")
        }
        table.add_row(
            row["project"],
            row["kind"],
            str(row["days"]),
            row["cutoff"][:19].replace("T", " "),
            f"{row['rows']:,}" + (" at most" if dry and row["kind"] == "payload" else ""),
            ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in details.items()),
        )
    return table


@app.command("apply")
def apply_command(
    config: ConfigOption = None,
    project: ProjectOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would go; change nothing")
    ] = False,
    rescan: Annotated[
        bool,
        typer.Option(
            "--rescan",
            help="read payloads from the oldest span again, not from where the last pass "
            "stopped (catches old spans stored after a pass went past them)",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Apply the retention policies now: delete expired spans (their trace summaries follow),
    drop expired payloads, delete expired per-item eval results and scores."""
    from bastion.retention import RetentionError, apply, plan

    settings = load(config)
    with local_engine(settings) as engine:
        try:
            planned = plan(engine, settings, project=project)
        except RetentionError as exc:
            raise fail(str(exc)) from exc
        if not planned.results:
            if as_json:
                echo_json(planned.to_dict())
            else:
                console.print("no retention period is configured: everything is kept")
            return
        if dry_run:
            report = planned
        else:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as progress:
                tasks = {
                    (r.project, r.kind): progress.add_task(f"{r.project} {r.kind}", total=r.rows)
                    for r in planned.results
                }
                report = apply(
                    engine,
                    settings,
                    project=project,
                    rescan=rescan,
                    progress=lambda slug, kind, rows: progress.update(
                        tasks[(slug, kind)], completed=rows
                    ),
                )
    if as_json:
        echo_json(report.to_dict())
        return
    console.print(_report_table(report.to_dict()))
    if not dry_run:
        console.print(
            f"{report.transactions} transactions in {report.seconds:.1f}s "
            f"({report.busy_s:.1f}s inside them)"
        )


def _erase_local(config: Any, project: str, fields: dict[str, str | None]) -> dict[str, Any]:
    from bastion.retention import ErasureBusy, ErasureError, ErasureRequest, erase

    def work(engine: Any, project_id: int) -> dict[str, Any]:
        request = ErasureRequest.of(project_id, **fields)
        return erase(engine, request, actor=actor()).to_dict()

    try:
        result: dict[str, Any] = run_local(
            config, project, work, create=False, expected=(ErasureBusy,)
        )
    except ErasureError as exc:
        raise fail(str(exc), code=2) from exc
    return result


def erase(
    user: Annotated[str | None, typer.Option("--user", help="a user id, as on the spans")] = None,
    trace: Annotated[str | None, typer.Option("--trace", help="a trace id")] = None,
    session: Annotated[str | None, typer.Option("--session", help="a session id")] = None,
    project: Annotated[str, typer.Option("--project", "-p", help="project (local store)")] = (
        "default"
    ),
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="BASTION_URL", help="server to ask (default: the local store)"
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", envvar="BASTION_API_KEY", help="an admin API key for --url"),
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Erase one user's, session's or trace's data from a project: the traces whole, dataset
    items made from them, their eval results and scores, dead letters, and for a user the
    roll-up rows naming them. Prints counts; the subject only as a digest."""
    fields = {"user": user, "trace": trace, "session": session}
    given = [name for name, value in fields.items() if value is not None]
    if len(given) != 1:
        raise typer.BadParameter(
            f"name exactly one of --user, --trace or --session (got {', '.join(given) or 'none'})"
        )
    if url:
        summary = api_call(
            url,
            key or os.environ.get("BASTION_API_KEY"),
            "POST",
            "/api/v1/erasures",
            body={given[0]: fields[given[0]]},
        )
    else:
        summary = _erase_local(config, project, fields)
    if as_json:
        echo_json(summary)
        return
    table = Table("erased", "count")
    for name in (
        "traces", "derived_traces", "spans", "dataset_items", "dataset_versions",
        "eval_results", "eval_scores", "rollup_rows", "rejects",
    ):  # fmt: skip
        table.add_row(name.replace("_", " "), f"{summary[name]:,}")
    console.print(table)
    console.print(f"{summary['subject']} sha256 {summary['subject_sha256']}")
    console.print(summary["storage"])
