"""``bastion demo``, first half of the release loop: push two prompt versions, then gate the
change with evals.

The prompt files are written where a team keeps them (``$BASTION_HOME/demo/prompts``) and pushed
through the prompt registry; the golden dataset ships with the package. Both prompt versions
run through the eval runner against the gateway the demo serves, and the paired comparison is
gated exactly as ``bastion eval gate`` does it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from rich.console import Console

from bastion.settings import Settings

if TYPE_CHECKING:
    from bastion.evals.compare import RunResults
    from bastion.evals.datasets import Item

__all__ = ["DEMO_MODEL", "GateOutcome", "PromptVersions", "gate_change", "push_prompts"]

#: The model alias both prompt versions are evaluated on (the stable release's model).
DEMO_MODEL = "demo-chat"
PROMPT = "confirm"
DATASET = "demo-orders"

# v1 leaves the answer's wording to the model; v2 asks for the exact confirmation the order
# system parses. The simulator follows a "Reply with:" line exactly, as a good model would.
PROMPT_V1 = """\
description: Confirm a customer's order
variables:
  order: {type: string}
  customer: {type: string}
text: "Confirm order {{ order }} for {{ customer }}."
"""
PROMPT_V2 = """\
description: Confirm a customer's order, in the format the order system parses
variables:
  order: {type: string}
  customer: {type: string}
text: "Confirm order {{ order }} for {{ customer }}. Reply with: order {{ order }} confirmed"
"""

#: Deterministic scorers: the exact expected answer, its format, and that it names the order.
SCORERS = [
    {"type": "equals", "value": "{{ expected }}"},
    {"type": "regex", "value": "^order [0-9]+ confirmed$"},
    {"type": "contains", "value": "{{ order }}"},
]


@dataclass(frozen=True)
class PromptVersions:
    """The registry versions of the demo prompt: production (v1) and the change (v2)."""

    name: str
    production: int
    change: int


@dataclass(frozen=True)
class GateOutcome:
    """The two eval runs and the gate's verdict on them."""

    baseline_run: str
    candidate_run: str
    passed: bool


def _push_file(
    engine: sa.Engine, project_id: int, folder: Path, text: str, message: str
) -> tuple[int, str]:
    from bastion.prompts import load_prompt_dir, registry

    (folder / f"{PROMPT}.prompt.yaml").write_text(text, encoding="utf-8")
    specs = load_prompt_dir(folder)
    with engine.begin() as conn:
        (result,) = registry.push(conn, project_id, specs, message=message, author="demo")
    return result.version, result.status


def _label(engine: sa.Engine, project_id: int, version: int) -> None:
    from bastion.prompts import registry

    with engine.begin() as conn:
        registry.set_label(
            conn, project_id, PROMPT, version, "production", actor="demo", role="admin"
        )


async def push_prompts(
    engine: sa.Engine, project_id: int, home: Path, console: Console
) -> PromptVersions:
    """Write v1 of the prompt file, push it and label it production; then edit the file into
    v2 and push that (unlabelled: it has to earn production)."""
    folder = home / "demo" / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    v1, status = await asyncio.to_thread(
        _push_file, engine, project_id, folder, PROMPT_V1, "first version"
    )
    await asyncio.to_thread(_label, engine, project_id, v1)
    console.print(
        f"[green]✓[/green] pushed {folder / (PROMPT + '.prompt.yaml')} → {PROMPT} v{v1} "
        f"({status}), labelled [bold]production[/bold]"
    )
    v2, status = await asyncio.to_thread(
        _push_file, engine, project_id, folder, PROMPT_V2, "answer in the parseable format"
    )
    console.print(
        f"[green]✓[/green] edited the file and pushed it again → {PROMPT} v{v2} ({status})"
    )
    console.print(f"  v{v1}: [dim]{_text(PROMPT_V1)}[/dim]\n  v{v2}: [dim]{_text(PROMPT_V2)}[/dim]")
    return PromptVersions(PROMPT, v1, v2)


def _text(source: str) -> str:
    return source.rsplit("text: ", 1)[1].strip().strip('"')


def _dataset_items() -> list[Item]:
    from bastion.evals.datasets import load_items

    data = resources.files("bastion.cli").joinpath("demo_data/golden.jsonl")
    with resources.as_file(data) as path:
        return list(load_items(path))


async def gate_change(
    engine: sa.Engine,
    project_id: int,
    settings: Settings,
    versions: PromptVersions,
    *,
    gateway_url: str,
    api_key: str,
    console: Console,
) -> GateOutcome:
    """Run the golden dataset through v1 (baseline) and v2 (candidate) on the gateway, compare
    the runs item by item and print the gate's verdict."""
    from bastion.evals import runner, store
    from bastion.evals.compare import compare
    from bastion.evals.gate import GateRules, evaluate_gate
    from bastion.evals.report import render_terminal

    items = await asyncio.to_thread(_dataset_items)
    pushed = await asyncio.to_thread(store.push_dataset, engine, project_id, DATASET, items)
    console.print(
        f"[green]✓[/green] golden dataset {DATASET} v{pushed.info.version}: {len(items)} orders, "
        f"scored by {', '.join(str(s['type']) for s in SCORERS)}"
    )
    run_ids = []
    for role, version in (("baseline", versions.production), ("candidate", versions.change)):
        plan = await asyncio.to_thread(
            runner.plan_run,
            engine,
            project_id,
            dataset=DATASET,
            target=runner.Target("prompt", versions.name, version=version),
            scorers=SCORERS,
            model=DEMO_MODEL,
        )
        summary = await runner.run_eval(
            engine, plan, gateway_url=gateway_url, api_key=api_key, concurrency=4
        )
        means = ", ".join(f"{m} {v['mean']:.2f}" for m, v in sorted(summary.metrics.items()))
        console.print(
            f"[green]✓[/green] {role}: {versions.name} v{version} on {DEMO_MODEL}, run "
            f"{summary.run_id[:12]}: {summary.results} results, {summary.errors} errors "
            f"({summary.wall_s:.1f}s) — {means}",
            highlight=False,
        )
        run_ids.append(summary.run_id)

    def load() -> list[RunResults]:
        with engine.connect() as conn:
            return [store.load_results(conn, project_id, r) for r in run_ids]

    baseline, candidate = await asyncio.to_thread(load)
    rules = GateRules.from_settings(settings)
    comparison = compare(baseline, candidate)
    verdict = evaluate_gate(comparison, rules)
    render_terminal(comparison, verdict, console)
    if verdict.passed:
        console.print(
            f"gate verdict: [bold green]PASSED[/] — {versions.name} v{versions.change} "
            "may be rolled out"
        )
    else:
        console.print(
            f"gate verdict: [bold red]FAILED[/] — {'; '.join(verdict.failures)}", highlight=False
        )
    return GateOutcome(run_ids[0], run_ids[1], verdict.passed)
