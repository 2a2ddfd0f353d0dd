"""``bastion eval``: push datasets, run evals through the gateway, compare runs, gate CI.

Datasets, runs and results live in the local store (``$BASTION_HOME`` or
``BASTION_DATABASE_URL``); model calls go through a running gateway (``--gateway``/``--key``).

Exit codes: 0 success (gate passed), 1 regression (gate failed), 2 error (bad input, unknown
dataset/prompt/run/scorer, bad gate configuration) - nothing is called when the input is bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from bastion.auth import ensure_project
from bastion.cli.common import (
    ConfigOption,
    QuietOption,
    audit_trail,
    errors,
    fail,
    load,
    local_engine,
)
from bastion.cli.eval_run_options import (
    ConcurrencyOption,
    GatewayKeyOption,
    GatewayOption,
    JudgeModelOption,
    ModelOption,
    NoCacheOption,
    PassRateThresholdOption,
    ProviderMapOption,
    RepeatsOption,
    ResumeOption,
    RunConfigOption,
    RunDatasetOption,
    RunPromptOption,
    ScorerOption,
    ScorersFileOption,
    TargetOption,
)
from bastion.cli.traces import ProjectOption
from bastion.evals.gate import EXIT_ERROR
from bastion.parsing import InputError, InputLimits, load_yaml, read_bounded
from bastion.settings import Settings

if TYPE_CHECKING:
    from bastion.evals.planning import EvalPlan, RunSummary
    from bastion.evals.scorers import JudgeClient, ScorerContext

app = typer.Typer(
    help="Evals: datasets, runs through the gateway, comparison and the CI gate.",
    no_args_is_help=True,
)
# Attached under ``eval dataset`` by bastion.cli.main, with the commands kept in eval_datasets.
dataset_app = typer.Typer(help="Versioned golden datasets.", no_args_is_help=True)
console = Console()

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def gateway_url(settings: Settings, gateway: str | None) -> str:
    """``--gateway``, or the local gateway of ``settings``; an http(s) URL or a CLI error."""
    url = gateway or f"http://{settings.host}:{settings.port}"
    if not url.startswith(("http://", "https://")):
        raise fail(f"--gateway {url!r}: must start with http:// or https://", EXIT_ERROR)
    return url


def _project(engine: sa.Engine, project: str) -> int:
    with engine.begin() as conn:
        return ensure_project(conn, project)


# -- datasets ----------------------------------------------------------------------------------


@dataset_app.command("push")
def dataset_push(
    name: Annotated[str, typer.Argument(help="dataset name")],
    file: Annotated[Path, typer.Argument(help=".jsonl, .csv, .yaml or .yml file")],
    lock: Annotated[bool, typer.Option("--lock", help="lock the version (a golden set)")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="add a version even if the newest is locked")
    ] = False,
    project: ProjectOption = "default",
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Store FILE's items as a version of dataset NAME (unchanged content: same version;
    ``--quiet`` prints ``NAME@VERSION``)."""
    from bastion.evals import store
    from bastion.evals.datasets import DatasetError, load_items
    from bastion.names import DATASET, InvalidName

    try:
        DATASET.check(name)
    except InvalidName as exc:
        raise fail(str(exc), EXIT_ERROR) from exc
    settings = load(config)
    try:
        items = load_items(file, settings.limits)
    except DatasetError as exc:
        raise fail(str(exc), EXIT_ERROR) from exc
    with local_engine(settings) as engine:
        project_id = _project(engine, project)
        try:
            pushed = store.push_dataset(
                engine, project_id, name, items, lock=lock, force=force, audit=audit_trail(settings)
            )
        except DatasetError as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    info = pushed.info
    if quiet:
        typer.echo(f"{info.name}@{info.version}")
        return
    locked = ", locked" if info.locked else ""
    console.print(
        f"{info.name}@{info.version}: {pushed.status} ({info.item_count} items{locked}, "
        f"{info.content_hash[:19]})",
        highlight=False,
    )


@dataset_app.command("list")
def dataset_list(project: ProjectOption = "default", config: ConfigOption = None) -> None:
    """List dataset versions."""
    from bastion.evals import store

    settings = load(config)
    with local_engine(settings) as engine:
        project_id = _project(engine, project)
        with engine.connect() as conn:
            infos = store.list_datasets(conn, project_id)
    table = Table("dataset", "version", "items", "locked", "hash", "created")
    for info in infos:
        table.add_row(
            info.name,
            str(info.version),
            str(info.item_count),
            "yes" if info.locked else "",
            info.content_hash[:19],
            info.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


# -- run -------------------------------------------------------------------------------------


def _scorer_specs(
    inline: list[str], path: Path | None, limits: InputLimits
) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for text in inline:
        try:
            spec = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise fail(f"--scorer {text!r} is not JSON: {exc}", EXIT_ERROR) from exc
        if not isinstance(spec, dict):
            raise fail(f"--scorer {text!r} must be a JSON object", EXIT_ERROR)
        specs.append(spec)
    if path is not None:
        try:
            data = load_yaml(read_bounded(path, limits), limits)
        except (OSError, UnicodeDecodeError, InputError) as exc:
            raise fail(f"--scorers {path}: {exc}", EXIT_ERROR) from exc
        if isinstance(data, dict) and "scorers" in data:
            data = data["scorers"]
        if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
            raise fail(
                f"--scorers {path}: expected a list of scorer specs (or 'scorers:')", EXIT_ERROR
            )
        specs.extend(data)
    return specs


def _dataset_ref(text: str) -> tuple[str, int | None]:
    name, _, version = text.partition("@")
    if not version:
        return name, None
    raw = version.removeprefix("v")
    if not raw.isdigit():
        raise fail(f"--dataset {text!r}: use NAME or NAME@VERSION", EXIT_ERROR)
    return name, int(raw)


def _price(settings: Any) -> Any:
    from bastion.catalog import Catalog

    catalog = Catalog.load(settings.prices)

    def price(model: str | None, input_tokens: int | None, output_tokens: int | None) -> Any:
        info = catalog.lookup(model)
        return None if info is None else info.cost(input_tokens, output_tokens)

    return price


def _summary_table(summary: Any) -> Table:
    table = Table("metric", "mean", "pass rate", "n", title=f"eval run {summary.run_id}")
    for metric, values in summary.metrics.items():
        table.add_row(
            metric, f"{values['mean']:.3f}", f"{values['pass_rate']:.1%}", str(int(values["n"]))
        )
    return table


def _run_target(
    prompt: str | None, target: str | None, model: str | None
) -> tuple[Any, str | None]:
    """``eval run``'s target and the model overriding a prompt's own: ``--target`` (a release
    or route, where ``--prompt`` picks the pinned prompt), else ``--prompt``, else ``--model``."""
    from bastion.evals import runner

    if target:
        chosen = runner.parse_target(target, prompt=prompt)
        if chosen.kind == "model" and model:
            raise runner.EvalSetupError("--model applies to prompt targets: give one model")
        return chosen, model
    if prompt:
        return runner.parse_target(prompt), model
    if model:
        return runner.Target("model", model), None
    raise runner.EvalSetupError(
        "give --prompt NAME[@LABEL|:VERSION], --model ALIAS or --target "
        "release:ID|NAME / route:NAME@ENV / model:ALIAS"
    )


@app.command("run")
def run(
    dataset: RunDatasetOption = None,
    prompt: RunPromptOption = None,
    target: TargetOption = None,
    model: ModelOption = None,
    scorer: ScorerOption = None,
    scorers: ScorersFileOption = None,
    repeats: RepeatsOption = 1,
    concurrency: ConcurrencyOption = 8,
    resume: ResumeOption = None,
    no_cache: NoCacheOption = False,
    gateway: GatewayOption = None,
    key: GatewayKeyOption = None,
    judge_model: JudgeModelOption = None,
    project: ProjectOption = "default",
    config: RunConfigOption = None,
    quiet: QuietOption = False,
    provider_map: ProviderMapOption = None,
    pass_rate_threshold: PassRateThresholdOption = None,
) -> None:
    """Run an eval: every dataset item through the target, scored and stored; or, with
    ``-c promptfooconfig.yaml``, a promptfoo config (exit 100 when tests fail)."""
    from bastion.evals.promptfoo import is_promptfoo_config
    from bastion.evals.scorers import JudgeClient, ScorerContext

    if config is not None and is_promptfoo_config(config):
        if quiet:
            raise fail("--quiet prints a run id: a promptfoo config makes several runs", EXIT_ERROR)
        if dataset or prompt or target or model or scorer or scorers or resume or repeats != 1:
            raise fail(
                "a promptfoo config sets the tests, prompts and providers itself: "
                "give none of --dataset/--prompt/--target/--model/--scorer(s)/--resume/--repeats",
                EXIT_ERROR,
            )
        raise typer.Exit(_run_promptfoo(
            config, project, gateway, key, judge_model, provider_map or [], pass_rate_threshold,
            concurrency, no_cache,
        ))  # fmt: skip
    if provider_map or pass_rate_threshold is not None:
        raise fail(
            "--provider-map and --pass-rate-threshold apply to promptfoo configs (-c)", EXIT_ERROR
        )
    settings = load(config)
    url = gateway_url(settings, gateway)
    if not key:
        raise fail("a gateway API key is needed: --key or BASTION_API_KEY", EXIT_ERROR)
    # Judges are called through the same gateway (so their calls are traced too).
    judge = (
        JudgeClient(url.rstrip("/") + "/v1", model=judge_model, api_key=key)
        if judge_model
        else None
    )
    context = ScorerContext(judge=judge, plugins=settings.plugins)
    with local_engine(settings) as engine:
        project_id = _project(engine, project)
        plan = _plan_run(
            engine, project_id, context, settings, dataset=dataset, prompt=prompt, target=target,
            model=model, scorer=scorer, scorers=scorers, repeats=repeats, resume=resume,
        )  # fmt: skip
        summary = _execute_run(
            engine, plan, judge, settings, url=url, key=key, concurrency=concurrency,
            no_cache=no_cache,
        )  # fmt: skip
    _print_run_summary(summary, quiet=quiet)


def _plan_run(
    engine: sa.Engine,
    project_id: int,
    context: ScorerContext,
    settings: Settings,
    *,
    dataset: str | None,
    prompt: str | None,
    target: str | None,
    model: str | None,
    scorer: list[str] | None,
    scorers: Path | None,
    repeats: int,
    resume: str | None,
) -> EvalPlan:
    """``eval run``'s plan: the resumed run's, or a new one; a setup problem exits 2."""
    from bastion.evals import runner
    from bastion.releases.eval_targets import resolve_release

    try:
        if resume:
            if dataset or prompt or target or model or scorer or scorers:
                raise runner.EvalSetupError(
                    "--resume takes the run's own dataset, target and scorers: "
                    "give none of --dataset/--prompt/--target/--model/--scorer(s)"
                )
            return runner.plan_resume(
                engine, project_id, resume, context=context, releases=resolve_release
            )
        if not dataset:
            raise runner.EvalSetupError("--dataset is required")
        chosen, model_override = _run_target(prompt, target, model)
        name, version = _dataset_ref(dataset)
        return runner.plan_run(
            engine,
            project_id,
            dataset=name,
            dataset_version=version,
            target=chosen,
            scorers=_scorer_specs(scorer or [], scorers, settings.limits),
            repeats=repeats,
            model=model_override,
            context=context,
            releases=resolve_release,
        )
    except runner.EvalSetupError as exc:
        raise fail(str(exc), EXIT_ERROR) from exc


def _execute_run(
    engine: sa.Engine,
    plan: EvalPlan,
    judge: JudgeClient | None,
    settings: Settings,
    *,
    url: str,
    key: str,
    concurrency: int,
    no_cache: bool,
) -> RunSummary:
    """Run ``plan`` with a progress bar; Ctrl-C exits 130 naming the command that resumes it."""
    from bastion.evals import runner

    async def go() -> RunSummary:
        async with contextlib.AsyncExitStack() as stack:
            if judge is not None:
                await stack.enter_async_context(judge)  # one pooled session for the judge
            return await runner.run_eval(
                engine,
                plan,
                gateway_url=url,
                api_key=str(key),
                concurrency=concurrency,
                use_cache=not no_cache,
                console=errors,
                price=_price(settings),
            )

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; results so far are stored. Resume with: bastion eval run "
            f"--resume {plan.run_id}",
            130,
        ) from None


def _print_run_summary(summary: RunSummary, *, quiet: bool) -> None:
    if quiet:
        typer.echo(summary.run_id)
        return
    console.print(_summary_table(summary))
    console.print(
        f"run {summary.run_id}: {summary.results} results ({summary.cached} cached, "
        f"{summary.skipped} already stored), {summary.calls} calls, {summary.errors} errors, "
        f"{summary.wall_s:.1f}s"
        + (f", p50 {summary.latency_p50_ms} ms" if summary.latency_p50_ms else ""),
        highlight=False,
    )
    typer.echo(summary.run_id)


def _run_promptfoo(
    path: Path,
    project: str,
    gateway: str | None,
    key: str | None,
    judge_model: str | None,
    provider_map: list[str],
    pass_rate_threshold: float | None,
    concurrency: int,
    no_cache: bool,
) -> int:
    """``eval run -c promptfooconfig.yaml``; Bastion's own settings come from
    ``$BASTION_HOME/bastion.yaml`` and ``BASTION_*`` variables."""
    from bastion.evals.promptfoo import PromptfooOptions, run_config

    settings = load(None)
    url = gateway_url(settings, gateway)
    options = PromptfooOptions(
        config=path, gateway_url=url, api_key=key or "", provider_map=tuple(provider_map),
        judge_model=judge_model, pass_rate_threshold=pass_rate_threshold,
        # 8 is the option's default: then the config's evaluateOptions.maxConcurrency decides.
        concurrency=concurrency if concurrency != 8 else None, use_cache=not no_cache,
    )  # fmt: skip
    with local_engine(settings) as engine:
        project_id = _project(engine, project)
        return run_config(
            engine, project_id, options, console=console, errors=errors, price=_price(settings)
        )


# -- compare and gate ------------------------------------------------------------------------


def _resolve_run(
    conn: sa.Connection,
    project_id: int,
    ref: str,
    dataset: str | None,
    prompt: str | None = None,
    route: str | None = None,
) -> str:
    """A run id, or a target reference (bare labels and environments with ``prompt`` and
    ``route``): that target's latest completed run on ``dataset``."""
    from bastion.evals import store
    from bastion.evals.references import latest_run_of, parse_reference
    from bastion.releases.eval_targets import resolve_release

    if _RUN_ID.match(ref):
        store.get_run(conn, project_id, ref)
        return ref
    target = parse_reference(ref, prompt=prompt, route=route)
    if dataset is None:
        raise store.EvalStoreError(
            f"{ref!r} is not a run id; to mean a target's latest run, give --dataset"
        )
    return latest_run_of(conn, project_id, _dataset_ref(dataset)[0], target, resolve_release).run_id


def _comparison(
    config: Path | None,
    project: str,
    baseline: str,
    candidate: str,
    dataset: str | None,
    prompt: str | None = None,
    route: str | None = None,
) -> tuple[Any, Any]:
    from bastion.evals import runner, store
    from bastion.evals.compare import compare
    from bastion.evals.gate import GateConfigError, GateRules, evaluate_gate

    settings = load(config)
    try:
        rules = GateRules.from_settings(settings)
    except GateConfigError as exc:
        raise fail(f"bastion.yaml: {exc}", EXIT_ERROR) from exc
    with local_engine(settings) as engine:
        project_id = _project(engine, project)
        with engine.connect() as conn:
            try:
                ids = [
                    _resolve_run(conn, project_id, r, dataset, prompt, route)
                    for r in (baseline, candidate)
                ]
                infos = [store.get_run(conn, project_id, run_id) for run_id in ids]
                for which, info in zip(("baseline", "candidate"), infos, strict=True):
                    if info.status != "completed":
                        raise store.EvalStoreError(
                            f"{which} run {info.run_id} is {info.status}, not completed "
                            f"(finish it with `bastion eval run --resume {info.run_id}`)"
                        )
                results = [store.load_results(conn, project_id, run_id) for run_id in ids]
            except (store.EvalStoreError, runner.EvalSetupError) as exc:
                raise fail(str(exc), EXIT_ERROR) from exc
    if infos[0].dataset_hash != infos[1].dataset_hash:
        errors.print(
            f"[yellow]note: the runs used different dataset versions "
            f"({infos[0].dataset_name}@{infos[0].dataset_version} vs "
            f"{infos[1].dataset_name}@{infos[1].dataset_version}); items pair by id[/yellow]"
        )
    try:
        comparison = compare(results[0], results[1])
    except ValueError as exc:
        raise fail(str(exc), EXIT_ERROR) from exc
    return comparison, evaluate_gate(comparison, rules)


_REF_HELP = "run id, or with --dataset a target: NAME@LABEL, release:ID, route:NAME@ENV, ..."
BaselineArg = Annotated[str, typer.Argument(help=_REF_HELP)]
DatasetOption = Annotated[
    str | None, typer.Option("--dataset", "-d", help="dataset for target references")
]
PromptRefOption = Annotated[
    str | None,
    typer.Option("--prompt", help="bare labels mean NAME@LABEL; picks a release's prompt"),
]
RouteRefOption = Annotated[
    str | None,
    typer.Option("--route", help="bare environments (staging, production) mean route:NAME@ENV"),
]


@app.command("compare")
def compare_runs(
    baseline: BaselineArg,
    candidate: Annotated[str, typer.Argument(help=_REF_HELP)],
    dataset: DatasetOption = None,
    prompt: PromptRefOption = None,
    route: RouteRefOption = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Compare two runs item by item (paired statistics); always exits 0 when it can compare."""
    from bastion.evals.report import render_terminal

    comparison, verdict = _comparison(config, project, baseline, candidate, dataset, prompt, route)
    render_terminal(comparison, verdict, console)


@app.command("gate")
def gate(
    baseline: Annotated[str, typer.Option("--baseline", "-b", help=_REF_HELP)],
    candidate: Annotated[str, typer.Option("--candidate", "-C", help=_REF_HELP)],
    dataset: DatasetOption = None,
    prompt: PromptRefOption = None,
    route: RouteRefOption = None,
    output: Annotated[
        list[Path] | None,
        typer.Option("--output", "-o", help="report file: .md, .xml (JUnit), .json, .txt"),
    ] = None,
    project: ProjectOption = "default",
    config: ConfigOption = None,
) -> None:
    """Exit 0 when the candidate passes the gate rules (bastion.yaml evals.gate), 1 on a
    regression, 2 on an error."""
    from bastion.evals.report import render_terminal, write_reports

    comparison, verdict = _comparison(config, project, baseline, candidate, dataset, prompt, route)
    render_terminal(comparison, verdict, console)
    if output:
        try:
            write_reports(output, comparison, verdict)
        except (ValueError, OSError) as exc:
            raise fail(str(exc), EXIT_ERROR) from exc
    raise typer.Exit(verdict.exit_code)
