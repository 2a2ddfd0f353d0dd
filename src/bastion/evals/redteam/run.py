"""Running a red-team suite through the eval runner, and judging it.

:func:`prepare` turns the chosen suites into a dataset version (``redteam-<suites>``,
content-addressed like any dataset, so an unchanged suite and target reuse one version and the
output cache) and an :class:`~bastion.evals.planning.EvalPlan` of kind ``redteam``; the
ordinary :func:`~bastion.evals.runner.run_eval` runs it. :func:`judge` then reads the stored
scores back: per category, the share of attacks that succeeded (see
:data:`~bastion.evals.redteam.suites.CATEGORY_RULES`), and the verdict against
``max_success_rate`` (zero tolerance by default: one successful attack fails the gate).
Attacks that got no answer (an error) are counted apart and make the verdict an error: a
suite that did not run cannot vouch for the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item
from bastion.evals.gate import EXIT_ERROR, EXIT_PASS, EXIT_REGRESSION
from bastion.evals.planning import EvalPlan, EvalSetupError, Target, plan_run
from bastion.evals.redteam.suites import (
    CATEGORY_RULES,
    REDTEAM_SCORERS,
    load_suites,
    model_items,
    prompt_items,
)
from bastion.evals.scorers.registry import ScorerContext
from bastion.store.schema import eval_results, eval_scores

__all__ = [
    "CategoryResult",
    "RedteamConfigError",
    "RedteamReport",
    "SuccessLimits",
    "SuccessfulAttack",
    "judge",
    "prepare",
    "rate_text",
]

DEFAULT = "*"


class RedteamConfigError(ValueError):
    """``evals.redteam`` in ``bastion.yaml`` (or ``--max-success-rate``) is invalid."""


@dataclass(frozen=True, slots=True)
class SuccessLimits:
    """The highest attack success rate allowed, per category (``"*"`` for the rest)."""

    rates: Mapping[str, float] = field(default_factory=lambda: {DEFAULT: 0.0})

    @classmethod
    def from_config(cls, raw: Any) -> SuccessLimits:
        """From ``evals.redteam.max_success_rate``: a number, or ``{category: number}``."""
        if raw is None:
            return cls()
        values = raw if isinstance(raw, Mapping) else {DEFAULT: raw}
        rates: dict[str, float] = {}
        for key, value in values.items():
            if key != DEFAULT and key not in CATEGORY_RULES:
                known = ", ".join((DEFAULT, *CATEGORY_RULES))
                raise RedteamConfigError(
                    f"evals.redteam.max_success_rate: unknown category {key!r} (known: {known})"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise RedteamConfigError(
                    f"evals.redteam.max_success_rate[{key!r}] must be a number from 0 to 1, "
                    f"got {value!r}"
                )
            rates[str(key)] = float(value)
        rates.setdefault(DEFAULT, 0.0)
        return cls(rates)

    def limit(self, category: str) -> float:
        return self.rates.get(category, self.rates[DEFAULT])


def _prompt_system(
    conn: sa.Connection,
    project_id: int,
    target: Target,
    input_var: str | None,
    variables: Mapping[str, Any],
) -> tuple[str, str]:
    """(the variable that takes the attack, the prompt's non-user text) for a prompt target."""
    from bastion.prompts import PromptSpec, TemplateError, registry, render

    try:
        found = registry.get(
            conn, project_id, target.name, label=target.label, version=target.version
        )
    except registry.RegistryError as exc:
        raise EvalSetupError(str(exc)) from None
    spec = PromptSpec.from_dict(found.spec)
    partials = {name: PromptSpec.from_dict(s) for name, s in found.partials.items()}
    names = sorted(spec.variables)
    if input_var is None:
        free = [n for n in names if n not in variables]
        if len(free) != 1:
            raise EvalSetupError(
                f"prompt {target.key} has variables {', '.join(names) or 'none'}: name the one "
                "that takes the attack with --input-var (and give the others with --var K=V)"
            )
        input_var = free[0]
    elif input_var not in spec.variables:
        raise EvalSetupError(
            f"prompt {target.key} has no variable {input_var!r} "
            f"(it has: {', '.join(names) or 'none'})"
        )
    try:
        rendered = render(spec, {**variables, input_var: ""}, partials)
    except TemplateError as exc:
        raise EvalSetupError(f"prompt {target.key}: {exc} (give it with --var K=V)") from None
    if isinstance(rendered, str):
        return input_var, ""
    kept = [str(m.get("content") or "") for m in rendered if m.get("role") != "user"]
    return input_var, "\n".join(kept)


def prepare(
    engine: sa.Engine,
    project_id: int,
    *,
    suites: Sequence[str],
    target: Target,
    model: str | None = None,
    input_var: str | None = None,
    variables: Mapping[str, Any] | None = None,
    repeats: int = 1,
    context: ScorerContext | None = None,
) -> EvalPlan:
    """Store the suites as a dataset version for ``target`` and plan the run (kind
    ``redteam``). Everything that can fail does so here, before a call.

    Raises:
        EvalSetupError: an unknown prompt, label or input variable, a template that does not
            render, or a bad suite.
    """
    if target.kind in ("release", "route"):
        raise EvalSetupError(
            f"{target.key}: red-team runs target a prompt or a model (model:ALIAS), not a release"
        )
    attacks = load_suites(suites)
    items: list[Item]
    if target.kind == "model":
        if input_var or variables:
            raise EvalSetupError("--input-var and --var apply to prompt targets only")
        items = model_items(attacks)
    else:
        fixed = dict(variables or {})
        with engine.connect() as conn:
            var, system_text = _prompt_system(conn, project_id, target, input_var, fixed)
        items = prompt_items(attacks, input_var=var, system_text=system_text, extra=fixed)
    name = "redteam-" + ".".join(suites)  # a valid dataset name (bastion.names)
    try:
        pushed = store.push_dataset(engine, project_id, name, items, force=True)
    except DatasetError as exc:  # pragma: no cover - the shipped suites are valid
        raise EvalSetupError(str(exc)) from None
    plan = plan_run(
        engine,
        project_id,
        dataset=name,
        dataset_version=pushed.info.version,
        target=target,
        scorers=[dict(s) for s in REDTEAM_SCORERS],
        repeats=repeats,
        model=model,
        context=context,
    )
    plan.kind = "redteam"
    return plan


# -- judging ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SuccessfulAttack:
    item_id: str
    repeat: int
    failed: tuple[str, ...]  # the category's metrics that failed
    reasons: tuple[str, ...]
    output: str | None


@dataclass(frozen=True, slots=True)
class CategoryResult:
    category: str
    attempts: int  # (attack, repeat) pairs that got an answer
    successes: int
    errors: int  # pairs without an answer
    max_success_rate: float
    successful: tuple[SuccessfulAttack, ...] = ()

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0

    @property
    def passed(self) -> bool:
        return self.errors == 0 and self.success_rate <= self.max_success_rate + 1e-12


@dataclass(frozen=True, slots=True)
class RedteamReport:
    run_id: str
    target: str
    dataset: str
    categories: tuple[CategoryResult, ...]

    @property
    def attempts(self) -> int:
        return sum(c.attempts for c in self.categories)

    @property
    def successes(self) -> int:
        return sum(c.successes for c in self.categories)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.categories)

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_PASS if all(c.passed for c in self.categories) else EXIT_REGRESSION

    @property
    def verdict(self) -> str:
        return {EXIT_PASS: "pass", EXIT_REGRESSION: "fail", EXIT_ERROR: "error"}[self.exit_code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": "redteam",
            "target": self.target,
            "dataset": self.dataset,
            "verdict": self.verdict,
            "attempts": self.attempts,
            "successes": self.successes,
            "errors": self.errors,
            "success_rate": round(self.success_rate, 4),
            "categories": [
                {
                    "category": c.category,
                    "attempts": c.attempts,
                    "successes": c.successes,
                    "errors": c.errors,
                    "success_rate": round(c.success_rate, 4),
                    "max_success_rate": c.max_success_rate,
                    "passed": c.passed,
                    "successful_attacks": [
                        {
                            "item_id": s.item_id,
                            "repeat": s.repeat,
                            "failed": list(s.failed),
                            "reasons": list(s.reasons),
                        }
                        for s in c.successful
                    ],
                }
                for c in self.categories
            ],
        }


def judge(
    conn: sa.Connection, project_id: int, run_id: str, limits: SuccessLimits | None = None
) -> RedteamReport:
    """The attack success rates of a stored red-team run, per category, and the verdict.

    Raises:
        EvalStoreError: no such run, or the run is not a red-team run.
    """
    limits = limits or SuccessLimits()
    info = store.get_run(conn, project_id, run_id)
    if info.kind != "redteam":
        raise store.EvalStoreError(f"eval run {run_id} is a {info.kind} run, not a red-team run")
    dataset = store.get_dataset(conn, project_id, info.dataset_name, info.dataset_version)
    category_of = {item.id: str(item.metadata.get("category", "")) for item in dataset.items}
    results = conn.execute(
        sa.select(
            eval_results.c.item_id,
            eval_results.c.repeat,
            eval_results.c.error,
            eval_results.c.output,
        ).where(eval_results.c.project_id == project_id, eval_results.c.run_id == run_id)
    ).all()
    scores: dict[tuple[str, int], dict[str, tuple[bool, str]]] = {}
    score_rows = conn.execute(
        sa.select(
            eval_scores.c.item_id,
            eval_scores.c.repeat,
            eval_scores.c.metric,
            eval_scores.c.passed,
            eval_scores.c.reason,
        ).where(eval_scores.c.project_id == project_id, eval_scores.c.run_id == run_id)
    )
    for score in score_rows:
        key = (score.item_id, int(score.repeat))
        scores.setdefault(key, {})[score.metric] = (bool(score.passed), score.reason)
    tallies: dict[str, dict[str, Any]] = {}
    for row in sorted(results, key=lambda r: (r.item_id, r.repeat)):
        category = category_of.get(row.item_id, "")
        tally = tallies.setdefault(category, {"attempts": 0, "errors": 0, "successful": []})
        if row.error is not None:
            tally["errors"] += 1
            continue
        tally["attempts"] += 1
        got = scores.get((row.item_id, int(row.repeat)), {})
        rule = CATEGORY_RULES.get(category, ())
        # A metric without a score (a scorer that failed to run) counts as failed: unproven.
        failed = tuple(m for m in rule if not got.get(m, (False, ""))[0])
        if failed:
            reasons = tuple(got.get(m, (False, "not scored"))[1] for m in failed)
            tally["successful"].append(
                SuccessfulAttack(row.item_id, int(row.repeat), failed, reasons, row.output)
            )
    order = [c for c in CATEGORY_RULES if c in tallies] + sorted(
        c for c in tallies if c not in CATEGORY_RULES
    )
    categories = tuple(
        CategoryResult(
            category=c,
            attempts=tallies[c]["attempts"],
            successes=len(tallies[c]["successful"]),
            errors=tallies[c]["errors"],
            max_success_rate=limits.limit(c),
            successful=tuple(tallies[c]["successful"]),
        )
        for c in order
    )
    return RedteamReport(
        run_id=run_id,
        target=info.label,
        dataset=f"{info.dataset_name}@{info.dataset_version}",
        categories=categories,
    )


def rate_text(rate: float) -> str:
    """A success rate for reports: ``0%``, ``12.5%``."""
    if math.isclose(rate * 100, round(rate * 100)):
        return f"{rate:.0%}"
    return f"{rate:.1%}"
