"""``bastion eval redteam``: run the built-in attack suites against a target and gate on them.

Attached to the ``eval`` group by :mod:`bastion.cli.main`. Exit codes: 0 every category
within its allowed attack success rate (zero by default), 1 an attack succeeded beyond it,
2 an error (bad input, or attacks that got no answer).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console

from bastion.auth import ensure_project
from bastion.cli.common import ConfigOption, errors, fail, load, local_engine
from bastion.cli.eval_run_options import (
    ConcurrencyOption,
    GatewayKeyOption,
    GatewayOption,
    NoCacheOption,
    RepeatsOption,
)
from bastion.cli.traces import ProjectOption
from bastion.evals.gate import EXIT_ERROR
from bastion.settings import Settings

if TYPE_CHECKING:
    from bastion.evals.planning import EvalPlan, RunSummary
    from bastion.evals.redteam import RedteamReport, SuccessLimits

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


RedteamTargetOption = Annotated[
    str | None,
    typer.Option("--target", "-t", help="prompt NAME, NAME@LABEL or NAME:VERSION, or model:ALIAS"),
]
SuiteOption = Annotated[
    str | None,
    typer.Option(
        "--suite",
        "-s",
        help="comma-separated: injection, system-prompt-exfiltration, pii-exfiltration, "
        "jailbreak, exfiltration (both), all (default)",
    ),
]
ReportOption = Annotated[
    list[Path] | None,
    typer.Option("--output", "-o", help="report file: .md, .xml (JUnit), .json, .txt"),
]
MaxSuccessRateOption = Annotated[
    float | None,
    typer.Option(
        "--max-success-rate",
        min=0.0,
        max=1.0,
        help="allowed attack success rate per category (default: bastion.yaml "
        "evals.redteam.max_success_rate, else 0: zero tolerance)",
    ),
]
PromptModelOption = Annotated[
    str | None, typer.Option("--model", help="gateway model for a prompt target")
]
InputVarOption = Annotated[
    str | None, typer.Option("--input-var", help="prompt variable that takes the attack text")
]
VarOption = Annotated[
    list[str] | None, typer.Option("--var", help="NAME=VALUE for other prompt variables")
]
RedteamResumeOption = Annotated[
    str | None, typer.Option("--resume", help="finish an interrupted red-team run")
]


@dataclass(frozen=True)
class _Attack:
    """What a new red-team run attacks, and how (every option but ``--resume``'s)."""

    target: str | None
    suite: str | None
    model: str | None
    input_var: str | None
    variables: list[str]
    repeats: int

    @property
    def given(self) -> bool:
        """Whether any of the options a resumed run takes from its own record is set."""
        return bool(self.target or self.suite or self.model or self.input_var or self.variables)


def redteam(
    target: RedteamTargetOption = None,
    suite: SuiteOption = None,
    output: ReportOption = None,
    max_success_rate: MaxSuccessRateOption = None,
    model: PromptModelOption = None,
    input_var: InputVarOption = None,
    var: VarOption = None,
    repeats: RepeatsOption = 1,
    concurrency: ConcurrencyOption = 8,
    resume: RedteamResumeOption = None,
    no_cache: NoCacheOption = False,
    gateway: GatewayOption = None,
    key: GatewayKeyOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Attack a target with the built-in red-team suites; report per category and gate."""
    from bastion.cli.evals import gateway_url

    settings = load(config)
    limits, suites = _checked_config(settings, max_success_rate, suite, output or [])
    url = gateway_url(settings, gateway)
    if not key:
        raise fail("a gateway API key is needed: --key or BASTION_API_KEY", EXIT_ERROR)
    attack = _Attack(target, suite, model, input_var, var or [], repeats)
    with local_engine(settings) as engine:
        with engine.begin() as conn:
            project_id = ensure_project(conn, project)
        plan = _plan(engine, project_id, suites, attack, resume)
        summary = _run(engine, plan, url, str(key), concurrency=concurrency, use_cache=not no_cache)
        report = _judge_and_keep(engine, project_id, summary, limits)
    _report(report, output or [])


def _checked_config(
    settings: Settings, max_success_rate: float | None, suite: str | None, output: list[Path]
) -> tuple[SuccessLimits, tuple[str, ...]]:
    """The success-rate limits and the suites to run, every option and setting checked before
    anything runs."""
    from bastion.evals.datasets import DatasetError
    from bastion.evals.redteam import RedteamConfigError, SuccessLimits, parse_suites
    from bastion.evals.redteam.report import check_paths

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
        check_paths(output)
    except (RedteamConfigError, DatasetError, ValueError) as exc:
        raise fail(f"{exc}", EXIT_ERROR) from exc
    return limits, suites


def _plan(
    engine: sa.Engine,
    project_id: int,
    suites: tuple[str, ...],
    attack: _Attack,
    resume: str | None,
) -> EvalPlan:
    """A new run's plan, or the plan that finishes the interrupted red-team run ``resume``."""
    from bastion.evals import runner
    from bastion.evals.redteam import prepare as prepare_run

    try:
        if not resume:
            return prepare_run(
                engine, project_id, suites=suites, target=_target(attack.target, attack.model),
                model=attack.model, input_var=attack.input_var,
                variables=_variables(attack.variables), repeats=attack.repeats,
            )  # fmt: skip
        if attack.given:
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
    except runner.EvalSetupError as exc:
        raise fail(str(exc), EXIT_ERROR) from exc
    return plan


def _run(
    engine: sa.Engine, plan: EvalPlan, url: str, key: str, *, concurrency: int, use_cache: bool
) -> RunSummary:
    """Every attack through the gateway; an interrupt keeps what ran and says how to resume."""
    from bastion.evals import runner

    try:
        return asyncio.run(
            runner.run_eval(
                engine,
                plan,
                gateway_url=url,
                api_key=key,
                concurrency=concurrency,
                use_cache=use_cache,
                console=errors,
            )
        )
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; results so far are stored. Resume with: bastion eval redteam "
            f"--resume {plan.run_id}",
            130,
        ) from None


def _judge_and_keep(
    engine: sa.Engine, project_id: int, summary: RunSummary, limits: SuccessLimits
) -> RedteamReport:
    """Judge the run per category; the verdict is kept with the run, so the API shows it
    beside the metrics."""
    from bastion.evals import store
    from bastion.evals.redteam import judge

    with engine.connect() as conn:
        report = judge(conn, project_id, summary.run_id, limits)
    store.finish_run(
        engine, project_id, summary.run_id, summary.status,
        {**summary.to_dict(), "redteam": report.to_dict()},
    )  # fmt: skip
    return report


def _report(report: RedteamReport, output: list[Path]) -> None:
    """Print the verdict, write the report files, and exit with the gate's code."""
    from bastion.evals.redteam.report import render_terminal, write_reports

    render_terminal(report, console)
    if output:
        try:
            write_reports(output, report)
        except OSError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    typer.echo(orjson.dumps({"run_id": report.run_id, "verdict": report.verdict}).decode())
    raise typer.Exit(report.exit_code)
