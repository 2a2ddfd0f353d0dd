"""``bastion eval redteam``: run the built-in attack suites against a target and gate on them.

Attached to the ``eval`` group by :mod:`bastion.cli.main`. Exit codes: 0 every category
within its allowed attack success rate (zero by default), 1 an attack succeeded beyond it,
2 an error (bad input, or attacks that got no answer).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from bastion.auth import ensure_project
from bastion.cli.common import ConfigOption, errors, fail, load, local_engine
from bastion.cli.traces import ProjectOption
from bastion.evals.gate import EXIT_ERROR

__all__ = ["redteam"]

console = Console()


def _variables(pairs: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--var {pair!r}: use NAME=VALUE", EXIT_ERROR)
        found[key.strip()] = value
    return found


def _target(text: str | None, model: str | None) -> Any:
    """The target of ``--target``: ``model:ALIAS`` or a prompt reference."""
    from bastion.evals import runner

    if not text:
        raise runner.EvalSetupError(
            "--target is required: a prompt NAME[@LABEL|:VERSION] or model:ALIAS"
        )
    if not text.startswith("model:"):
        return runner.parse_target(text)
    if model:
        raise runner.EvalSetupError("--model applies to prompt targets only")
    alias = text.removeprefix("model:").strip()
    if not alias:
        raise runner.EvalSetupError("model: needs a gateway model alias")
    return runner.Target("model", alias)


def redteam(
    target: Annotated[
        str | None,
        typer.Option(
            "--target", "-t", help="prompt NAME, NAME@LABEL or NAME:VERSION, or model:ALIAS"
        ),
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(
            "--suite",
            "-s",
            help="comma-separated: injection, system-prompt-exfiltration, pii-exfiltration, "
            "jailbreak, exfiltration (both), all (default)",
        ),
    ] = None,
    output: Annotated[
        list[Path] | None,
        typer.Option("--output", "-o", help="report file: .md, .xml (JUnit), .json, .txt"),
    ] = None,
    max_success_rate: Annotated[
        float | None,
        typer.Option(
            "--max-success-rate",
            min=0.0,
            max=1.0,
            help="allowed attack success rate per category (default: bastion.yaml "
            "evals.redteam.max_success_rate, else 0: zero tolerance)",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="gateway model for a prompt target")
    ] = None,
    input_var: Annotated[
        str | None,
        typer.Option("--input-var", help="prompt variable that takes the attack text"),
    ] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="NAME=VALUE for other prompt variables")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, max=100)] = 1,
    concurrency: Annotated[int, typer.Option(min=1, max=1024)] = 8,
    resume: Annotated[
        str | None, typer.Option("--resume", help="finish an interrupted red-team run")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="call the model even for cached outputs")
    ] = False,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", envvar="BASTION_GATEWAY_URL", help="gateway base URL"),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="BASTION_API_KEY", help="gateway API key")
    ] = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Attack a target with the built-in red-team suites; report per category and gate."""
    from bastion.cli.evals import gateway_url
    from bastion.evals import runner
    from bastion.evals.datasets import DatasetError
    from bastion.evals.redteam import RedteamConfigError, SuccessLimits, judge, parse_suites
    from bastion.evals.redteam import prepare as prepare_run
    from bastion.evals.redteam.report import check_paths, render_terminal, write_reports

    settings = load(config)
    section = settings.sections.get("evals") or {}
    raw = section.get("redteam") if isinstance(section, dict) else None
    try:
        if raw is not None and not isinstance(raw, dict):
            raise RedteamConfigError("evals.redteam must be a mapping")
        unknown = sorted(set(raw or {}) - {"max_success_rate"})
        if unknown:
            raise RedteamConfigError(
                f"unknown key(s) in evals.redteam: {', '.join(unknown)} "
                "(expected: max_success_rate)"
            )
        limits = SuccessLimits.from_config(
            max_success_rate
            if max_success_rate is not None
            else (raw or {}).get("max_success_rate")
        )
        suites = parse_suites(suite)
        check_paths(output or [])
    except (RedteamConfigError, DatasetError, ValueError) as exc:
        raise fail(f"{exc}", EXIT_ERROR) from exc
    url = gateway_url(settings, gateway)
    if not key:
        raise fail("a gateway API key is needed: --key or BASTION_API_KEY", EXIT_ERROR)
    with local_engine(settings) as engine:
        with engine.begin() as conn:
            project_id = ensure_project(conn, project)
        try:
            if resume:
                if target or suite or model or input_var or var:
                    raise runner.EvalSetupError(
                        "--resume takes the run's own target and suites: give none of "
                        "--target/--suite/--model/--input-var/--var"
                    )
                plan = runner.plan_resume(engine, project_id, resume)
                if plan.kind != "redteam":
                    raise runner.EvalSetupError(
                        f"eval run {resume} is a {plan.kind} run: resume it with "
                        f"bastion eval run --resume {resume}"
                    )
            else:
                plan = prepare_run(
                    engine, project_id, suites=suites, target=_target(target, model),
                    model=model, input_var=input_var, variables=_variables(var or []),
                    repeats=repeats,
                )  # fmt: skip
        except runner.EvalSetupError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
        try:
            summary = asyncio.run(
                runner.run_eval(
                    engine,
                    plan,
                    gateway_url=url,
                    api_key=str(key),
                    concurrency=concurrency,
                    use_cache=not no_cache,
                    console=errors,
                )
            )
        except KeyboardInterrupt:
            raise fail(
                f"interrupted; results so far are stored. Resume with: bastion eval redteam "
                f"--resume {plan.run_id}",
                130,
            ) from None
        with engine.connect() as conn:
            report = judge(conn, project_id, summary.run_id, limits)
        # The verdict is kept with the run, so the API shows it beside the metrics.
        from bastion.evals import store

        store.finish_run(
            engine, project_id, summary.run_id, summary.status,
            {**summary.to_dict(), "redteam": report.to_dict()},
        )  # fmt: skip
    render_terminal(report, console)
    if output:
        try:
            write_reports(output, report)
        except OSError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    typer.echo(orjson.dumps({"run_id": report.run_id, "verdict": report.verdict}).decode())
    raise typer.Exit(report.exit_code)
