"""``bastion release``: create release bundles, deploy them, roll them out and roll them back.

Every command works on the local store (``--project``), or on a running server with ``--url``
and ``--key`` (``BASTION_URL`` / ``BASTION_API_KEY``). Rollout analysis runs in the server; the
local form only records the changes, which a server sharing the database acts on.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from bastion.cli.common import (
    ConfigOption,
    QuietOption,
    actor,
    api_call,
    echo_json,
    fail,
    load,
    read_local,
    write_audited,
)
from bastion.cli.release_views import print_history, print_status
from bastion.cli.traces import KeyOption, ProjectOption, UrlOption

if TYPE_CHECKING:
    from bastion.audit import AuditTrail
    from bastion.releases.model import RolloutPolicy

app = typer.Typer(
    help="Releases: bundles of prompts + model + params, rolled out as canary, A/B or shadow.",
    no_args_is_help=True,
)
console = Console()

_T = TypeVar("_T")

RouteArg = Annotated[str, typer.Argument(help="route: the feature name the app calls")]
EnvOption = Annotated[str, typer.Option("--env", "-e", help="environment: production or staging")]
ReasonOption = Annotated[str | None, typer.Option("--reason", "-r", help="why (kept in history)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def _release_errors() -> tuple[type[Exception], ...]:
    from bastion.releases import ReleaseError, ReleaseSpecError

    return (ReleaseError, ReleaseSpecError)


def _read(config: Path | None, project: str, work: Callable[[sa.Connection, int], _T]) -> _T:
    return read_local(config, project, work, expected=_release_errors())


def _write(config: Path | None, project: str, work: Callable[..., _T]) -> _T:
    return write_audited(config, project, work, expected=_release_errors())


def _q(*parts: str) -> str:
    return "/".join(urllib.parse.quote(p, safe="") for p in parts)


def _check_env(env: str) -> str:
    if env not in ("production", "staging"):
        raise typer.BadParameter(f"--env must be production or staging, not {env!r}")
    return env


# -- releases ----------------------------------------------------------------------------------


@app.command()
def create(
    file: Annotated[Path, typer.Option("--file", "-f", help="release YAML file")],
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create an immutable release from a YAML file (same content → the existing release)."""
    from bastion.releases import ReleaseSpec, ReleaseSpecError
    from bastion.releases import store as release_store

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"{file}: {exc.strerror or exc}") from exc
    try:
        spec = ReleaseSpec.from_yaml(text, str(file))
    except ReleaseSpecError as exc:
        raise fail(str(exc)) from exc
    if url:
        doc = api_call(url, key, "POST", "/api/v1/releases", body={"spec": spec.to_dict()})
    else:

        def work(conn: sa.Connection, pid: int, trail: AuditTrail) -> dict[str, Any]:
            info, created = release_store.create_release(
                conn, pid, spec, actor=actor(), audit=trail
            )
            return {**info.to_dict(), "created": created}

        doc = _write(config, project, work)
    if quiet:
        typer.echo(doc["release_id"])
        return
    if as_json:
        echo_json(doc)
        return
    state = "created" if doc["created"] else "unchanged (same content exists)"
    console.print(f"release [bold]{doc['release_id']}[/bold] ({doc['name']}): {state}")


@app.command("list")
def list_(
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List releases, newest first."""
    from bastion.releases import store as release_store

    if url:
        items = api_call(url, key, "GET", "/api/v1/releases")["items"]
    else:
        items = _read(
            config,
            project,
            lambda c, pid: [i.to_dict() for i in release_store.list_releases(c, pid)],
        )
    if as_json:
        echo_json(items)
        return
    table = Table("release", "name", "model", "prompts", "created", "by")
    for item in items:
        spec = item["spec"]
        prompts = ", ".join(f"{n}:v{v}" for n, v in (spec.get("prompts") or {}).items())
        table.add_row(
            item["release_id"],
            item["name"],
            spec["model"],
            prompts or "-",
            item["created_at"][:19],
            item["created_by"],
        )
    console.print(table)


@app.command()
def show(
    release: Annotated[str, typer.Argument(help="release id, id prefix or name")],
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Show a release's content."""
    from bastion.releases import store as release_store

    if url:
        doc = api_call(url, key, "GET", "/api/v1/releases/" + _q(release))
    else:
        doc = _read(
            config, project, lambda c, pid: release_store.get_release(c, pid, release).to_dict()
        )
    echo_json(doc)


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="release id, prefix or name")],
    b: Annotated[str, typer.Argument(help="release id, prefix or name")],
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what changes from release A to release B: configuration and prompt templates."""
    if url:
        doc = api_call(url, key, "GET", f"/api/v1/releases/{_q(a)}/diff", params={"b": b})
    else:
        from bastion.releases.diff import diff_releases

        doc = _read(config, project, lambda c, pid: diff_releases(c, pid, a, b).to_dict())
    if as_json:
        echo_json(doc)
        return
    if not doc["config"] and not doc["prompts"]:
        console.print(f"{doc['a']} and {doc['b']} have the same content")
        return
    if doc["config"]:
        table = Table("setting", doc["a"], doc["b"], title="configuration", show_lines=True)
        for change in doc["config"]:
            table.add_row(
                change["key"], f"[red]{change['a']}[/red]", f"[green]{change['b']}[/green]"
            )
        console.print(table)
    for prompt in doc["prompts"]:
        title = f"prompt {prompt['name']}: v{prompt['version_a']} → v{prompt['version_b']}"
        table = Table(doc["a"], doc["b"], title=title, show_lines=True)
        table.add_row(prompt["template_a"], prompt["template_b"])
        console.print(table)
        if prompt["diff"]:
            console.print(
                Syntax(prompt["diff"], "diff", theme="ansi_dark", background_color="default")
            )


# -- routes ------------------------------------------------------------------------------------


def _route_call(
    url: str, key: str | None, route: str, action: str, body: dict[str, Any]
) -> dict[str, Any]:
    doc: dict[str, Any] = api_call(
        url, key, "POST", f"/api/v1/routes/{_q(route)}/{action}", body=body
    )
    return doc


@app.command()
def deploy(
    route: RouteArg,
    release: Annotated[str, typer.Argument(help="release id, prefix or name")],
    env: EnvOption = "production",
    reason: ReasonOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Make RELEASE the stable release of ROUTE now (no rollout; recorded in the history)."""
    _check_env(env)
    if url:
        doc = _route_call(
            url, key, route, "deploy", {"release": release, "environment": env, "reason": reason}
        )
        release_id = doc["stable_release_id"]
    else:
        from bastion.releases import store as release_store

        release_id = _write(
            config,
            project,
            lambda c, pid, trail: (
                release_store.deploy(
                    c, pid, route, env, release, actor=actor(), reason=reason, audit=trail
                ).release_id
            ),
        )
    console.print(f"{route} ({env}) now serves release [bold]{release_id}[/bold]")


def _quality_option(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        spec = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"--quality must be a JSON scorer spec: {exc}") from exc
    if not isinstance(spec, dict):
        raise typer.BadParameter('--quality must be a JSON object like {"type": "is-json"}')
    return spec


def _gate_option(value: str | None) -> dict[str, Any] | None:
    """``BASELINE_RUN:CANDIDATE_RUN`` or a gate report JSON file from ``bastion eval gate``."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix == ".json" or path.is_file():
        try:
            return {"report": orjson.loads(path.read_bytes())}
        except (OSError, orjson.JSONDecodeError) as exc:
            message = f"--require-gate {value}: not a readable JSON report: {exc}"
            raise typer.BadParameter(message) from exc
    baseline, sep, candidate = value.partition(":")
    if not sep or not baseline or not candidate:
        raise typer.BadParameter(
            "--require-gate takes BASELINE_RUN:CANDIDATE_RUN or a gate report .json file"
        )
    return {"baseline": baseline, "candidate": candidate}


@app.command()
def rollout(
    route: RouteArg,
    candidate: Annotated[str, typer.Option("--candidate", help="release id, prefix or name")],
    strategy: Annotated[str, typer.Option(help="canary, ab or shadow")] = "canary",
    steps: Annotated[str, typer.Option(help="canary percentages; 100 promotes")] = "5,25,50,100",
    bake: Annotated[str, typer.Option(help="bake time per step: 60s, 500ms, 5m")] = "60s",
    min_requests: Annotated[int, typer.Option(help="requests per arm before a verdict")] = 20,
    split: Annotated[float, typer.Option(help="A/B: percent on the candidate")] = 50.0,
    quality: Annotated[
        str | None,
        typer.Option(help='scorer spec (JSON) judging sampled answers, e.g. {"type": "is-json"}'),
    ] = None,
    quality_sample: Annotated[float, typer.Option(help="fraction of answers scored")] = 1.0,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE, e.g. p99_ratio=2 (repeatable)"),
    ] = None,
    require_gate: Annotated[
        str | None,
        typer.Option(help="BASELINE_RUN:CANDIDATE_RUN or a gate report .json that must pass"),
    ] = None,
    env: EnvOption = "production",
    reason: ReasonOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Start rolling CANDIDATE out on ROUTE (canary steps, A/B split or shadow copy)."""
    from bastion.releases import ReleaseSpecError
    from bastion.releases.model import make_policy

    _check_env(env)
    thresholds = _threshold_options(threshold)
    try:
        policy = make_policy(
            strategy=strategy,
            steps=steps,
            bake=bake,
            min_requests=min_requests,
            thresholds=thresholds,
            split=split,
            quality=_quality_option(quality),
            quality_sample=quality_sample,
        )
    except ReleaseSpecError as exc:
        raise fail(str(exc), 2) from exc
    gate = _gate_option(require_gate)
    if url:
        body = {
            "candidate": candidate,
            "environment": env,
            "strategy": strategy,
            "steps": list(policy.steps),
            "bake": policy.bake_s,
            "min_requests": min_requests,
            "thresholds": thresholds,
            "split": split,
            "quality": policy.quality,
            "quality_sample": quality_sample,
            "gate": gate,
            "reason": reason,
        }
        doc = _route_call(url, key, route, "rollout", body)
    else:
        doc = _start_rollout_locally(config, project, route, env, candidate, policy, gate, reason)
    _print_rollout(doc, route, env, as_json=as_json, quiet=quiet)


def _threshold_options(items: list[str] | None) -> dict[str, float]:
    """Parse repeated ``--threshold NAME=NUMBER`` options."""
    thresholds: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            thresholds[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"--threshold {item!r}: give NAME=NUMBER")
    return thresholds


def _start_rollout_locally(
    config: Path | None,
    project: str,
    route: str,
    env: str,
    candidate: str,
    policy: RolloutPolicy,
    gate: dict[str, Any] | None,
    reason: str | None,
) -> dict[str, Any]:
    """Start the rollout straight against the database, checking the gate in the same write."""
    from bastion.releases import rollouts
    from bastion.releases.gate import check_gate

    settings = load(config)

    def work(conn: sa.Connection, pid: int, trail: AuditTrail) -> dict[str, Any]:
        evidence = check_gate(conn, settings, pid, gate) if gate is not None else None
        return rollouts.start_rollout(
            conn,
            pid,
            route,
            env,
            candidate,
            policy,
            actor=actor(),
            gate=evidence,
            reason=reason,
            audit=trail,
        ).to_dict()

    return _write(config, project, work)


def _print_rollout(
    doc: dict[str, Any], route: str, env: str, *, as_json: bool, quiet: bool
) -> None:
    if quiet:
        typer.echo(doc["rollout_id"])
        return
    if as_json:
        echo_json(doc)
        return
    console.print(
        f"rollout [bold]{doc['rollout_id']}[/bold]: {doc['strategy']} of "
        f"{doc['candidate_release_id']} on {route} ({env}) at {doc['weight']:g}%"
    )


@app.command()
def status(
    route: RouteArg,
    env: EnvOption = "production",
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what serves ROUTE now, and the live state and analysis of its rollout."""
    _check_env(env)
    if url:
        doc = api_call(url, key, "GET", f"/api/v1/routes/{_q(route)}", params={"environment": env})
    else:
        from bastion.releases.service import route_status

        doc = _read(config, project, lambda c, pid: route_status(c, pid, route, env))
    if as_json:
        echo_json(doc)
    else:
        print_status(doc)


@app.command()
def routes(
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List routes: the stable release of each environment and its rollout in progress."""
    if url:
        items = api_call(url, key, "GET", "/api/v1/routes")["items"]
    else:
        from bastion.releases.service import route_list

        items = _read(config, project, route_list)
    if as_json:
        echo_json(items)
        return
    table = Table("route", "environment", "stable", "rollout")
    for item in items:
        r = item["rollout"]
        rollout = (
            "-"
            if r is None
            else (
                f"{r['state']} {r['strategy']} of {r['candidate_release_id']} at {r['weight']:g}%"
            )
        )
        table.add_row(item["route"], item["environment"], item["stable_release_id"], rollout)
    console.print(table)


def _action_command(name: str, help_text: str) -> None:
    def command(
        route: RouteArg,
        env: EnvOption = "production",
        reason: ReasonOption = None,
        url: UrlOption = None,
        key: KeyOption = None,
        project: ProjectOption = "default",
        config: ConfigOption = None,
    ) -> None:
        _check_env(env)
        if url:
            doc = _route_call(url, key, route, name, {"environment": env, "reason": reason})
        else:
            from bastion.releases import rollouts
            from bastion.releases.service import route_status

            act = getattr(rollouts, name)

            def work(conn: sa.Connection, pid: int, trail: AuditTrail) -> dict[str, Any]:
                act(conn, pid, route, env, actor=actor(), reason=reason, audit=trail)
                return route_status(conn, pid, route, env)

            doc = _write(config, project, work)
        print_status(doc)

    command.__doc__ = help_text
    app.command(name)(command)


_action_command("promote", "Make the candidate of ROUTE's rollout stable now (audited).")
_action_command("pause", "Hold ROUTE's rollout at its weight: no automatic decisions.")
_action_command("resume", "Resume ROUTE's paused rollout (the step's bake starts over).")
_action_command("abort", "Stop ROUTE's rollout; stable serves everything again (audited).")
_action_command(
    "rollback",
    "Roll ROUTE back now: end its rollout, or return to the previous stable release.",
)


def _parse_time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"--at {value!r}: give an ISO time like 2026-11-30T14:03") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@app.command()
def history(
    route: RouteArg,
    at: Annotated[str | None, typer.Option(help="ISO time: what was serving then")] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="environment")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every deploy, step, promotion and rollback of ROUTE; with --at, what served then."""
    from bastion.releases import store as release_store

    if env is not None:
        _check_env(env)
    if at is not None:
        when = _parse_time(at)
        environment = env or "production"
        if url:
            found = api_call(
                url,
                key,
                "GET",
                f"/api/v1/routes/{_q(route)}/history",
                params={"environment": environment, "at": when.isoformat()},
            )["serving"]
        else:
            event = _read(
                config,
                project,
                lambda c, pid: release_store.serving_at(c, pid, route, environment, when),
            )
            found = event.to_dict() if event is not None else None
        if as_json:
            echo_json(found)
        elif found is None:
            console.print(f"nothing was deployed on {route} ({environment}) at {when.isoformat()}")
        else:
            line = (
                f"at {when.isoformat()} {route} ({environment}) served {found['stable_release_id']}"
            )
            if found["candidate_release_id"]:
                line += (
                    f" with {found['candidate_release_id']} at {found['weight']:g}%"
                    f" ({found['strategy']})"
                )
            console.print(line + f"  [dim](since {found['action']} at {found['at'][:19]})[/dim]")
        return
    if url:
        items = api_call(
            url, key, "GET", f"/api/v1/routes/{_q(route)}/history", params={"environment": env}
        )["items"]
    else:
        items = _read(
            config,
            project,
            lambda c, pid: [e.to_dict() for e in release_store.history(c, pid, route, env)],
        )
    if as_json:
        echo_json(items)
        return
    print_history(items)
