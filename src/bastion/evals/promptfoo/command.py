"""``bastion eval run -c promptfooconfig.yaml``: load, plan, run, print, decide the exit code.

Exit codes follow promptfoo: 0 when every test passed (or the pass rate reached the
threshold: ``--pass-rate-threshold`` or ``PROMPTFOO_PASS_RATE_THRESHOLD``, in percent), else
``PROMPTFOO_FAILED_TEST_EXIT_CODE`` (default 100); 2 when the config cannot be run (nothing is
called then).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from bastion.evals.promptfoo.config import Suite, load_suite, parse_provider_map
from bastion.evals.promptfoo.loading import PromptfooError
from bastion.evals.promptfoo.running import SuiteResult, plan_suite, run_suite

__all__ = [
    "DEFAULT_FAILED_EXIT",
    "PromptfooOptions",
    "exit_code",
    "pass_rate_threshold",
    "run_config",
]

DEFAULT_FAILED_EXIT = 100
EXIT_ERROR = 2
_SHOWN_FAILURES = 10


@dataclass(frozen=True, slots=True)
class PromptfooOptions:
    """What ``eval run`` passes on for a promptfoo config."""

    config: Path
    gateway_url: str
    api_key: str
    provider_map: tuple[str, ...] = ()
    judge_model: str | None = None
    pass_rate_threshold: float | None = None
    concurrency: int | None = None
    use_cache: bool = True


def pass_rate_threshold(option: float | None, environ: Mapping[str, str]) -> float | None:
    """The pass-rate threshold in percent: the option, else ``PROMPTFOO_PASS_RATE_THRESHOLD``.

    Raises:
        PromptfooError: the value is not a number from 0 to 100.
    """
    if option is not None:
        raw: Any = option
        source = "--pass-rate-threshold"
    else:
        raw = environ.get("PROMPTFOO_PASS_RATE_THRESHOLD")
        source = "PROMPTFOO_PASS_RATE_THRESHOLD"
        if raw is None or not str(raw).strip():
            return None
    try:
        value = float(raw)
    except ValueError:
        raise PromptfooError(f"{source}: {raw!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise PromptfooError(f"{source}: must be a percentage from 0 to 100, got {raw!r}")
    return value


def exit_code(result: SuiteResult, threshold: float | None, environ: Mapping[str, str]) -> int:
    """0 when every test passed or the pass rate (percent) reached ``threshold``, else
    ``PROMPTFOO_FAILED_TEST_EXIT_CODE`` (default 100)."""
    if result.passed == result.total:
        return 0
    if threshold is not None and result.pass_rate * 100 >= threshold:
        return 0
    raw = environ.get("PROMPTFOO_FAILED_TEST_EXIT_CODE", "")
    try:
        code = int(raw) if raw.strip() else DEFAULT_FAILED_EXIT
    except ValueError:
        code = DEFAULT_FAILED_EXIT
    return code if 0 < code < 256 else DEFAULT_FAILED_EXIT


def _tables(suite: Suite, result: SuiteResult) -> list[Table]:
    title = suite.description or str(suite.path)
    main = Table("prompt", "provider", "pass", "fail", "error", "pass rate", "score", title=title)
    for target in result.targets:
        score = (
            target.score_sum / (target.passed + target.failed)
            if target.passed + target.failed
            else 0.0
        )
        main.add_row(
            target.prompt, target.provider, str(target.passed), str(target.failed),
            str(target.errors), f"{target.passed / target.total:.1%}" if target.total else "-",
            f"{score:.3f}",
        )  # fmt: skip
    tables = [main]
    metrics = sorted({m for t in result.targets for m in t.named})
    if metrics:
        named = Table("metric", *(f"{t.provider} / {t.prompt}" for t in result.targets),
                      title="named metrics (mean score)")  # fmt: skip
        for metric in metrics:
            cells = []
            for target in result.targets:
                values = target.named.get(metric)
                cells.append(f"{math.fsum(values) / len(values):.3f}" if values else "-")
            named.add_row(metric, *cells)
        tables.append(named)
    return tables


def run_config(
    engine: sa.Engine,
    project_id: int,
    options: PromptfooOptions,
    *,
    console: Console,
    errors: Console,
    price: Any = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run a promptfoo config; print the tables, failures and run ids; return the exit code."""
    environ = os.environ if environ is None else environ
    try:
        threshold = pass_rate_threshold(options.pass_rate_threshold, environ)
        suite = load_suite(options.config, provider_map=parse_provider_map(options.provider_map))
        for warning in suite.warnings:
            errors.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
        plan = plan_suite(
            suite, gateway_url=options.gateway_url, api_key=options.api_key,
            judge_model=options.judge_model,
        )  # fmt: skip
        concurrency = options.concurrency or suite.max_concurrency or 8
        result = asyncio.run(
            run_suite(
                engine, project_id, plan, gateway_url=options.gateway_url,
                api_key=options.api_key, concurrency=concurrency, use_cache=options.use_cache,
                console=errors, price=price,
            )
        )  # fmt: skip
    except PromptfooError as exc:
        errors.print(f"[red]{exc}[/red]", highlight=False)
        return EXIT_ERROR
    except KeyboardInterrupt:
        errors.print(
            "[red]interrupted: the answered tests are stored; run the config again to finish "
            "(their outputs come from the cache)[/red]",
            highlight=False,
        )
        return 130
    for table in _tables(suite, result):
        console.print(table)
    for target in result.targets:
        for label, reason in target.failures[:_SHOWN_FAILURES]:
            console.print(
                f"FAIL {target.provider} / {target.prompt} / {label}: {reason}", highlight=False
            )
        hidden = len(target.failures) - _SHOWN_FAILURES
        if hidden > 0:
            console.print(f"... and {hidden} more failures", highlight=False)
    code = exit_code(result, threshold, environ)
    verdict = "passed" if code == 0 else "failed"
    bar = f" (threshold {threshold:g}%)" if threshold is not None else ""
    console.print(
        f"{result.passed}/{result.total} tests passed ({result.pass_rate:.1%}){bar}: {verdict}; "
        f"{result.wall_s:.1f}s",
        highlight=False,
    )
    for target in result.targets:
        console.print(target.run_id, highlight=False)
    return code
