"""``bastion eval dataset from-traces | lock | show``: datasets snapshotted from production
traces, golden (locked) versions, and a version's items.

Attached to the ``eval dataset`` group by :mod:`bastion.cli.main`; like the rest of
``bastion eval`` these work on the local store.
"""

from __future__ import annotations

from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from bastion.auth import ensure_project
from bastion.cli.common import (
    ConfigOption,
    QuietOption,
    audit_trail,
    fail,
    load,
    local_engine,
)
from bastion.cli.traces import ProjectOption
from bastion.evals.gate import EXIT_ERROR

__all__ = ["from_traces", "lock", "show"]

console = Console()


def _ref(text: str) -> tuple[str, int | None]:
    name, _, version = text.partition("@")
    if not version:
        return name, None
    raw = version.removeprefix("v")
    if not raw.isdigit() or int(raw) < 1:
        raise fail(f"{text!r}: use NAME or NAME@VERSION", EXIT_ERROR)
    return name, int(raw)


def from_traces(
    name: Annotated[str, typer.Argument(help="dataset name")],
    since: Annotated[
        str | None, typer.Option("--since", help="spans from: 30m, 24h, 7d or an ISO time")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="spans before: 30m, 24h, 7d or an ISO time")
    ] = None,
    feature: Annotated[str | None, typer.Option("--feature")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model asked for or served")] = None,
    user: Annotated[str | None, typer.Option("--user", help="user id")] = None,
    error_class: Annotated[str | None, typer.Option("--error-class")] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="NAME, NAME@VERSION or NAME@LABEL: spans of that prompt"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="items at most")] = 200,
    sample: Annotated[
        float, typer.Option("--sample", help="keep this fraction of matching spans (0-1]")
    ] = 1.0,
    expected_from_output: Annotated[
        bool,
        typer.Option("--expected-from-output", help="take each span's output as expected"),
    ] = False,
    lock: Annotated[bool, typer.Option("--lock", help="lock the version (golden)")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="add a version even if the newest is locked")
    ] = False,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Snapshot model-call spans matching the filters into a new version of dataset NAME
    (items link back to their trace and span; ``--quiet`` prints ``NAME@VERSION``)."""
    from bastion.evals import store
    from bastion.evals.datasets import DatasetError
    from bastion.evals.from_traces import TraceSelection, resolve_prompt, snapshot
    from bastion.prompts.registry_queries import RegistryError
    from bastion.prompts.usage import parse_since

    settings = load(config)
    try:
        start, end = parse_since(since), parse_since(until)
    except RegistryError as exc:
        raise fail(str(exc), EXIT_ERROR) from exc
    with local_engine(settings) as engine:
        with engine.begin() as conn:
            project_id = ensure_project(conn, project)
        try:
            with engine.connect() as conn:
                prompt_name, prompt_version = (
                    resolve_prompt(conn, project_id, prompt) if prompt else (None, None)
                )
                selection = TraceSelection(
                    since=start, until=end, feature=feature, model=model, user=user,
                    error_class=error_class, prompt_name=prompt_name,
                    prompt_version=prompt_version, limit=limit, sample=sample,
                    expected_from_output=expected_from_output,
                )  # fmt: skip
                taken = snapshot(conn, project_id, selection)
            pushed = store.push_dataset(
                engine, project_id, name, taken.items, lock=lock, force=force,
                sources=taken.sources, audit=audit_trail(settings),
            )  # fmt: skip
        except DatasetError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    info = pushed.info
    if quiet:
        typer.echo(f"{info.name}@{info.version}")
        return
    left_out = ", ".join(f"{n} {why}" for why, n in sorted(taken.skipped.items()))
    console.print(
        f"{info.name}@{info.version}: {pushed.status} ({info.item_count} items from "
        f"{taken.matched} matching spans{'; skipped ' + left_out if left_out else ''}"
        f"{', locked' if info.locked else ''}, {info.content_hash[:19]})",
        highlight=False,
    )


def lock(
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@VERSION")],
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Lock a dataset version: a golden set. Its items never change; new content under the
    name then needs --force (a new version)."""
    from bastion.evals import store

    name, version = _ref(ref)
    settings = load(config)
    with local_engine(settings) as engine:
        with engine.begin() as conn:
            project_id = ensure_project(conn, project)
        try:
            info = store.lock_dataset(
                engine, project_id, name, version, audit=audit_trail(settings)
            )
        except store.EvalStoreError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    console.print(f"{info.name}@{info.version}: locked ({info.item_count} items)", highlight=False)


def show(
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@VERSION")],
    as_json: Annotated[bool, typer.Option("--json", help="print the items as JSON lines")] = False,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Show a dataset version's items (and, for items made from traces, their source)."""
    from bastion.evals import store

    name, version = _ref(ref)
    settings = load(config)
    with local_engine(settings) as engine:
        with engine.begin() as conn:
            project_id = ensure_project(conn, project)
        try:
            with engine.connect() as conn:
                found = store.get_dataset(conn, project_id, name, version)
                links = store.item_sources(conn, project_id, name, found.info.version)
        except store.EvalStoreError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    if as_json:
        for item in found.items:
            row = {"id": item.id, "vars": dict(item.vars), "expected": item.expected,
                   "tags": list(item.tags), "metadata": dict(item.metadata)}  # fmt: skip
            typer.echo(orjson.dumps(row).decode())
        return
    info = found.info
    title = (
        f"{info.name}@{info.version} ({info.item_count} items{', locked' if info.locked else ''})"
    )
    table = Table("id", "vars", "expected", "tags", "trace", title=title)
    for item in found.items:
        source = links.get(item.id)
        table.add_row(
            item.id,
            orjson.dumps(dict(item.vars)).decode()[:80],
            "" if item.expected is None else str(item.expected)[:40],
            ", ".join(item.tags),
            source[0] if source else "",
        )
    console.print(table)
