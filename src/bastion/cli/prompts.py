"""``bastion prompts``: push prompt files, pull them back, label, roll back, diff and log.

Every command talks to a running server with ``--url``/``--key`` (or ``BASTION_URL`` /
``BASTION_API_KEY``), or works straight on the local store.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from bastion.auth import Role
from bastion.cli.common import (
    ConfigOption,
    QuietOption,
    actor,
    api_call,
    audit_trail,
    echo_json,
    errors,
    fail,
    load,
    read_local,
    write_local,
)
from bastion.cli.traces import KeyOption, ProjectOption, UrlOption

app = typer.Typer(
    help="Prompts as code: push, pull, label, roll back, diff, log.", no_args_is_help=True
)
console = Console()

_T = TypeVar("_T")

NameArg = Annotated[str, typer.Argument(help="prompt name")]
LabelArg = Annotated[str, typer.Argument(help="label, e.g. production or staging")]
ReasonOption = Annotated[str | None, typer.Option("--reason", "-r", help="why (kept in the log)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def _registry_errors() -> tuple[type[Exception], ...]:
    from bastion.prompts.registry_queries import RegistryError

    return (RegistryError,)


def _read(config: Path | None, project: str, work: Callable[[sa.Connection, int], _T]) -> _T:
    """Read the local store; a read never makes the project (a missing one exits 1)."""
    return read_local(config, project, work, create=False, expected=_registry_errors())


def _write(config: Path | None, project: str, work: Callable[[sa.Connection, int], _T]) -> _T:
    return write_local(config, project, work, expected=_registry_errors())


def _path(name: str, *rest: str) -> str:
    return "/api/v1/prompts/" + "/".join(urllib.parse.quote(p, safe="") for p in (name, *rest))


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


@app.command()
def push(
    directory: Annotated[Path, typer.Argument(help="directory of <name>.prompt.yaml files")],
    message: Annotated[str, typer.Option("--message", "-m", help="what changed and why")] = "",
    git_sha: Annotated[str | None, typer.Option(help="the commit the files come from")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Push every prompt file in DIRECTORY: new content becomes a new version (``--quiet``
    prints ``NAME@VERSION`` per prompt, one a line).

    Invalid files are all reported as file:line: reason and nothing is pushed (exit 2).
    """
    from bastion.prompts import PromptDirError, load_prompt_dir

    try:
        specs = load_prompt_dir(directory)
    except PromptDirError as exc:
        for error in exc.errors:
            errors.print(str(error), highlight=False, markup=False)
        errors.print(f"[red]{len(exc.errors)} invalid prompt file(s): nothing pushed[/red]")
        raise typer.Exit(2) from exc
    if not specs:
        raise fail(f"no prompt files (*.prompt.yaml) in {directory}", 2)
    if url:
        payload = {"prompts": [s.to_dict() for s in specs], "message": message, "git_sha": git_sha}
        results = api_call(url, key, "POST", "/api/v1/prompts", body=payload)["results"]
    else:
        from bastion.prompts import registry
        from bastion.prompts.template_budget import ProjectLimits

        settings = load(config)
        limits = ProjectLimits.from_settings(settings).of(project)
        trail = audit_trail(settings)
        pushed = _write(
            config,
            project,
            lambda conn, pid: registry.push(
                conn,
                pid,
                specs,
                message=message,
                author=actor(),
                git_sha=git_sha,
                limits=limits,
                audit=trail,
            ),
        )
        results = [r.model_dump(mode="json") for r in pushed]
    if quiet:
        for r in results:
            typer.echo(f"{r['name']}@{r['version']}")
        return
    if as_json:
        echo_json(results)
        return
    table = Table("prompt", "status", "version", "content hash")
    colour = {"created": "green", "updated": "yellow", "unchanged": "dim"}
    for r in results:
        status = f"[{colour[r['status']]}]{r['status']}[/]"
        table.add_row(r["name"], status, f"v{r['version']}", r["content_hash"][:19])
    console.print(table)


@app.command()
def pull(
    directory: Annotated[Path, typer.Argument(help="where to write <name>.prompt.yaml files")],
    label: Annotated[str, typer.Option(help="label to pull ('latest' for the newest)")] = (
        "production"
    ),
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Write the version each prompt's LABEL points at as DIRECTORY/<name>.prompt.yaml.

    Names come from the server or the database: a name that is not a valid prompt name, or
    whose file would land outside DIRECTORY, fails the pull (exit 2) before anything is written.
    """
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    if url:
        for item in api_call(url, key, "GET", "/api/v1/prompts")["items"]:
            if label != "latest" and label not in item["labels"]:
                missing.append(item["name"])
                continue
            found.append(api_call(url, key, "GET", _path(item["name"]), params={"label": label}))
    else:
        from bastion.prompts import registry

        def work(conn: sa.Connection, pid: int) -> None:
            for item in registry.list_prompts(conn, pid):
                if label != "latest" and label not in item.labels:
                    missing.append(item.name)
                    continue
                found.append(_dump(registry.get(conn, pid, item.name, label=label)))

        _read(config, project, work)
    directory.mkdir(parents=True, exist_ok=True)
    files = _pulled_files(directory, found)
    table = Table("prompt", "version", "file")
    for prompt, (target, text) in zip(found, files, strict=True):
        target.write_text(text, encoding="utf-8")
        table.add_row(prompt["name"], f"v{prompt['version']}", str(target))
    console.print(table)
    if missing:
        from rich.markup import escape

        shown = escape(", ".join(missing))
        errors.print(f"[yellow]no label {escape(repr(label))}: {shown} (not written)[/yellow]")


def _pulled_files(directory: Path, found: list[dict[str, Any]]) -> list[tuple[Path, str]]:
    """The file and text of each pulled prompt, or a CLI error (exit 2) listing every prompt
    whose name is not a valid prompt name, does not match its content or leaves ``directory``."""
    from rich.markup import escape

    from bastion.names import PROMPT, InvalidName
    from bastion.prompts import PromptSpec, PromptSpecError, dump_prompt_file
    from bastion.safe_paths import UnsafePath, file_under

    files: list[tuple[Path, str]] = []
    refused: list[str] = []
    for prompt in found:
        name = prompt.get("name")
        try:
            PROMPT.check(name)
            spec = PromptSpec.from_dict(prompt.get("spec") or {})
            if spec.name != name:
                raise PromptSpecError(("name",), f"{spec.name!r} is not the prompt's name {name!r}")
            files.append((file_under(directory, f"{name}.prompt.yaml"), dump_prompt_file(spec)))
        except (InvalidName, UnsafePath, PromptSpecError) as exc:
            refused.append(f"  {escape(str(exc))}")  # a server's names are not markup
    if refused:
        raise fail("refusing to pull (nothing written):\n" + "\n".join(refused), 2)
    return files


@app.command("list")
def list_(
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List prompts with their newest version and labels."""
    if url:
        items = api_call(url, key, "GET", "/api/v1/prompts")["items"]
    else:
        from bastion.prompts import registry

        items = _read(
            config, project, lambda c, pid: [_dump(p) for p in registry.list_prompts(c, pid)]
        )
    if as_json:
        echo_json(items)
        return
    table = Table("prompt", "latest", "labels", "description", "updated")
    for p in items:
        labels = ", ".join(f"{k}=v{v}" for k, v in sorted(p["labels"].items()))
        updated = p["updated_at"][:19].replace("T", " ")
        table.add_row(p["name"], f"v{p['latest_version']}", labels, p["description"] or "", updated)
    console.print(table)


@app.command()
def diff(
    name: NameArg,
    a: Annotated[str, typer.Argument(help="version number or label")],
    b: Annotated[str, typer.Argument(help="version number or label")],
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Show a unified diff of two versions (or labels) of prompt NAME."""
    if url:
        text = api_call(url, key, "GET", _path(name, "diff"), params={"a": a, "b": b})["diff"]
    else:
        from bastion.prompts import registry

        text = _read(config, project, lambda c, pid: registry.diff(c, pid, name, a, b))
    if not text:
        console.print(f"{name}: {a} and {b} have the same content")
        return
    console.print(Syntax(text, "diff", theme="ansi_dark", background_color="default"))


@app.command()
def log(
    name: NameArg,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the versions of prompt NAME and the history of its labels."""
    if url:
        found = api_call(url, key, "GET", _path(name, "log"))
    else:
        from bastion.prompts import registry

        found = _read(config, project, lambda c, pid: _dump(registry.log(c, pid, name)))
    if as_json:
        echo_json(found)
        return
    versions = Table("version", "labels", "hash", "author", "git", "message", "created", title=name)
    for v in found["versions"]:
        versions.add_row(
            f"v{v['version']}",
            ", ".join(v["labels"]),
            v["content_hash"][:19],
            v["author"],
            (v["git_sha"] or "")[:10],
            v["message"],
            v["created_at"][:19].replace("T", " "),
        )
    console.print(versions)
    if found["events"]:
        events = Table("when", "label", "action", "from", "to", "by", "reason", title="labels")
        for e in found["events"]:
            events.add_row(
                e["at"][:19].replace("T", " "),
                e["label"],
                e["action"],
                "" if e["from_version"] is None else f"v{e['from_version']}",
                f"v{e['to_version']}",
                e["actor"],
                e["reason"] or "",
            )
        console.print(events)


def _print_change(change: dict[str, Any]) -> None:
    before = "—" if change["from_version"] is None else f"v{change['from_version']}"
    lock = " (protected)" if change["protected"] else ""
    if not change["changed"]:
        console.print(f"{change['name']}: {change['label']}{lock} already at {before}")
        return
    console.print(
        f"{change['name']}: {change['label']}{lock} {before} → v{change['to_version']}",
        highlight=False,
    )


@app.command()
def label(
    name: NameArg,
    version: Annotated[int, typer.Argument(help="version number", min=1)],
    label: LabelArg,
    reason: ReasonOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Point LABEL of prompt NAME at VERSION (a deploy)."""
    if url:
        body = {"version": version, "reason": reason}
        change = api_call(url, key, "PUT", _path(name, "labels", label), body=body)
    else:
        from bastion.prompts import registry

        trail = audit_trail(load(config))
        change = _write(
            config,
            project,
            lambda c, pid: _dump(
                registry.set_label(
                    c,
                    pid,
                    name,
                    version,
                    label,
                    actor=actor(),
                    reason=reason,
                    role=Role.ADMIN,
                    audit=trail,
                )
            ),
        )
    _print_change(change)


@app.command()
def rollback(
    name: NameArg,
    label: LabelArg,
    reason: ReasonOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Move LABEL of prompt NAME back to the version it pointed at before its last move."""
    if url:
        path = _path(name, "labels", label, "rollback")
        change = api_call(url, key, "POST", path, body={"reason": reason})
    else:
        from bastion.prompts import registry

        trail = audit_trail(load(config))
        change = _write(
            config,
            project,
            lambda c, pid: _dump(
                registry.rollback(
                    c, pid, name, label, actor=actor(), reason=reason, role=Role.ADMIN, audit=trail
                )
            ),
        )
    _print_change(change)


@app.command()
def protect(
    name: NameArg,
    label: LabelArg,
    off: Annotated[bool, typer.Option("--off", help="remove the protection")] = False,
    reason: ReasonOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Protect LABEL of prompt NAME: only admin keys may move it afterwards."""
    if url:
        path = _path(name, "labels", label, "protect")
        change = api_call(url, key, "POST", path, body={"protected": not off, "reason": reason})
    else:
        from bastion.prompts import registry

        trail = audit_trail(load(config))
        change = _write(
            config,
            project,
            lambda c, pid: _dump(
                registry.protect_label(
                    c,
                    pid,
                    name,
                    label,
                    actor=actor(),
                    role=Role.ADMIN,
                    protected=not off,
                    reason=reason,
                    audit=trail,
                )
            ),
        )
    console.print(
        f"{name}: {label} is {'protected' if change['protected'] else 'not protected'}",
        highlight=False,
    )


@app.command()
def usage(
    name: NameArg,
    since: Annotated[str | None, typer.Option(help="30m, 24h, 7d or an ISO time")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per version of prompt NAME: label deployments, traces, errors, p95 latency, tokens, cost."""
    if url:
        found = api_call(url, key, "GET", _path(name, "usage"), params={"since": since})
    else:
        from bastion.prompts.usage import parse_since, prompt_usage

        found = _read(
            config,
            project,
            lambda c, pid: _dump(prompt_usage(c, pid, name, since=parse_since(since))),
        )
    if as_json:
        echo_json(found)
        return
    columns = ("version", "labels", "deployed", "spans", "traces", "errors", "p95 ms", "tokens")
    table = Table(*columns, "cost $", "last seen", "recent trace", "eval scores", title=name)
    for v in found["versions"]:
        deployed = ", ".join(
            f"{d['label']} {d['at'][:16].replace('T', ' ')}" for d in v["deployments"]
        )
        rate = f" ({v['error_rate']:.1%})" if v["error_rate"] else ""
        table.add_row(
            "—" if v["version"] is None else f"v{v['version']}",
            ", ".join(v["labels"]),
            deployed,
            str(v["span_count"]),
            str(v["trace_count"]),
            f"{v['error_count']}{rate}",
            "" if v["p95_latency_ms"] is None else f"{v['p95_latency_ms']:.0f}",
            f"{v['input_tokens']}/{v['output_tokens']}",
            "" if v["cost_usd"] is None else f"{v['cost_usd']:.4f}",
            (v["last_seen"] or "")[:19].replace("T", " "),
            (v["recent_trace_ids"] or [""])[0],
            _eval_cell(v.get("evals") or []),
        )
    console.print(table)


def _eval_cell(evals: list[dict[str, Any]]) -> str:
    """``golden@2: equals 0.92, refusal 1.00`` per dataset (newest run of each), one per line."""
    lines = []
    for entry in evals:
        means = ", ".join(f"{m} {v:.2f}" for m, v in sorted(entry["metrics"].items()))
        kind = " (red team)" if entry["kind"] == "redteam" else ""
        lines.append(f"{entry['dataset']}{kind}: {means or 'no metrics'}")
    return "\n".join(lines)
