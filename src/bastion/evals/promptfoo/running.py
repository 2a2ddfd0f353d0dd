"""Planning and running a promptfoo suite through the gateway, stored like any eval run.

One eval run per (prompt, provider) pair, over one dataset (``Suite.dataset``, content
addressed: the same config gives the same version) whose items are the expanded tests, so
``bastion eval compare`` and ``eval gate`` pair two runs of a config test by test. Each test's
result stores a ``test`` score (the weighted score, passed as promptfoo decides) and one score
per metric (an assertion's ``metric``, else its type), with every reason.

Everything that can fail before a call fails in :func:`plan_suite` (templates, variables,
assertion types and arguments, files, graders). Outputs are reused from the eval output cache
like ``bastion eval run`` does; ``echo`` never calls anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson
import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress, TaskID

from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item
from bastion.evals.planning import RetryPolicy
from bastion.evals.promptfoo.asserts import (
    Assertion,
    BuildContext,
    Runtime,
    Subject,
    TestGrade,
    Verdict,
    build_assertions,
    grade,
)
from bastion.evals.promptfoo.cases import TestCase
from bastion.evals.promptfoo.config import Prompt, Provider, Suite
from bastion.evals.promptfoo.loading import Problems, PromptfooError
from bastion.evals.promptfoo.sandbox import ScriptPool, node_path
from bastion.evals.promptfoo.templating import render_prompt
from bastion.evals.runner import (
    _cached,
    _Caller,
    _metric_summary,
    _Recorder,
    gather_or_cancel,
    progress_bar,
)
from bastion.evals.scorers.base import Output, Score, ScoreError, clamp
from bastion.evals.scorers.judge import JudgeClient
from bastion.evals.scorers.registry import ScorerContext
from bastion.prompts import TemplateError

__all__ = ["SuitePlan", "SuiteResult", "TargetResult", "plan_suite", "run_suite"]

TEST_METRIC = "test"
_JUDGE_TYPES = frozenset(
    {"llm-rubric", "model-graded-closedqa", "factuality", "model-graded-factuality"}
)


@dataclass(frozen=True, slots=True)
class _Planned:
    case: TestCase
    item: Item
    messages: list[dict[str, Any]]
    prompt_text: str
    asserts: tuple[Assertion, ...]


@dataclass
class _Target:
    prompt: Prompt
    provider: Provider
    key: str
    target_hash: str
    tests: list[_Planned]
    cacheable: bool


@dataclass
class SuitePlan:
    """A suite ready to run: nothing in it can fail for a template, variable or assertion."""

    suite: Suite
    items: tuple[Item, ...]
    targets: list[_Target]
    judge: JudgeClient | None
    needs_python: bool
    needs_javascript: bool


@dataclass
class TargetResult:
    """One (prompt, provider) run: counts, the run id and each failing test's reason."""

    run_id: str
    key: str
    prompt: str
    provider: str
    passed: int = 0
    failed: int = 0
    errors: int = 0
    cached: int = 0
    calls: int = 0
    score_sum: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (test, reason)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    named: dict[str, list[float]] = field(default_factory=dict)  # explicit metric -> scores

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors


@dataclass
class SuiteResult:
    """Every target's result and the totals promptfoo's exit code is decided on."""

    targets: list[TargetResult]
    wall_s: float

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.targets)

    @property
    def total(self) -> int:
        return sum(t.total for t in self.targets)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 1.0


def _prompt_text(messages: Sequence[Mapping[str, Any]], prompt: Prompt) -> str:
    if prompt.text is not None and len(messages) == 1:
        content = messages[0].get("content")
        if isinstance(content, str):
            return content
    return json.dumps(list(messages), ensure_ascii=False)


def _item(case: TestCase) -> Item:
    metadata: dict[str, Any] = {"where": case.where, "assert": [dict(a) for a in case.asserts]}
    if case.description:
        metadata["description"] = case.description
    if case.threshold is not None:
        metadata["threshold"] = case.threshold
    if case.options:
        metadata["options"] = dict(case.options)
    if case.metadata:
        metadata["metadata"] = dict(case.metadata)
    return Item(id=f"t{case.index + 1:04d}", vars=dict(case.vars), metadata=metadata)


def _gateway_embedder(url: str, key: str) -> Any:
    """``similar`` with a ``provider``: embeddings from the gateway's ``/v1/embeddings``."""
    import urllib.request

    def embedder_for(alias: str) -> Any:
        def embed(texts: list[str]) -> list[list[float]]:
            body = orjson.dumps({"model": alias, "input": texts})
            request = urllib.request.Request(  # noqa: S310 - the configured gateway URL
                url.rstrip("/") + "/v1/embeddings",
                data=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                data = orjson.loads(response.read())
            ordered = sorted(data["data"], key=lambda d: d.get("index", 0))
            return [list(map(float, d["embedding"])) for d in ordered]

        return embed

    return embedder_for


def plan_suite(
    suite: Suite,
    *,
    gateway_url: str,
    api_key: str,
    judge_model: str | None = None,
) -> SuitePlan:
    """Render every (prompt, test), build every assertion, for every provider.

    Raises:
        PromptfooError: listing every problem found.
    """
    problems = Problems()
    default_judge = judge_model or suite.judge
    judge = (
        JudgeClient(
            gateway_url.rstrip("/") + "/v1", model=default_judge or "unset", api_key=api_key
        )
        if api_key
        else None
    )
    node = node_path() is not None
    items = tuple(_item(case) for case in suite.tests)
    targets: list[_Target] = []
    needs_python = needs_javascript = False
    for p_index, prompt in enumerate(suite.prompts):
        for provider in suite.providers:
            tools = provider.params.get("tools") or ()
            build = BuildContext(
                base=suite.path.resolve().parent,
                scorer_context=ScorerContext(
                    judge=judge, tools=tools if isinstance(tools, list) else ()
                ),
                judge_models=suite.provider_map,
                default_judge=default_judge,
                embedder_for=_gateway_embedder(gateway_url, api_key),
                node_available=node,
            )
            planned: list[_Planned] = []
            cacheable = True
            for case, item in zip(suite.tests, items, strict=True):
                where = f"{case.where} (prompt {p_index + 1})"
                options = case.options
                try:
                    messages = render_prompt(
                        prompt.source, case.vars,
                        prefix=str(options.get("prefix") or ""),
                        suffix=str(options.get("suffix") or ""),
                    )  # fmt: skip
                except TemplateError as exc:
                    problems.error(f"{where}: {exc}")
                    continue
                asserts = build_assertions(case, build, problems, case.where)
                kinds = _types(case.asserts)
                needs_python |= "python" in kinds
                needs_javascript |= "javascript" in kinds
                if any("function-call" in k or "tools-call" in k for k in kinds):
                    cacheable = False  # the output cache keeps text, not tool calls
                planned.append(
                    _Planned(case, item, messages, _prompt_text(messages, prompt), asserts)
                )
            target_hash = store.stable_hash(
                {"prompt": prompt.source, "provider": provider.kind, "model": provider.model}
            )
            key = f"promptfoo:{provider.label}:{prompt.label}"
            targets.append(_Target(prompt, provider, key, target_hash, planned, cacheable))
    uses_gateway = any(p.kind == "gateway" for p in suite.providers) or any(
        k in _JUDGE_TYPES for t in suite.tests for k in _types(t.asserts)
    )
    if uses_gateway and not api_key:
        problems.error("a gateway API key is needed: --key or BASTION_API_KEY")
    problems.raise_errors()
    needs_judge = any(k in _JUDGE_TYPES for t in suite.tests for k in _types(t.asserts))
    return SuitePlan(
        suite, items, targets, judge if needs_judge else None, needs_python, needs_javascript
    )


def _types(asserts: Sequence[Mapping[str, Any]]) -> set[str]:
    """Every assertion type used, inside assert-sets too, without ``not-``."""
    found: set[str] = set()
    for raw in asserts:
        kind = str(raw.get("type", ""))
        found.add(kind.removeprefix("not-"))
        children = raw.get("assert")
        if kind == "assert-set" and isinstance(children, list):
            found |= _types([c for c in children if isinstance(c, Mapping)])
    return found


# -- scoring ------------------------------------------------------------------------------------


async def _grade(
    planned: _Planned, output: Output, provider: Provider, runtime: Runtime
) -> TestGrade:
    subject = Subject(output, planned.case.vars, planned.prompt_text, planned.case, provider.id)
    components: list[tuple[Assertion, Verdict]] = []
    for assertion in planned.asserts:
        try:
            verdict = await assertion.evaluate(subject, runtime)
        except ScoreError:
            raise  # the judge failed, not the output: the test is an error (see run_test)
        except Exception as exc:  # noqa: BLE001 - one broken assertion must not lose the output
            verdict = Verdict(False, 0.0, f"assertion error: {type(exc).__name__}: {exc}")
        components.append((assertion, verdict))
    return grade(components, planned.case.threshold)


def _scores(result: TestGrade, case: TestCase) -> tuple[Score, ...]:
    """The stored scores: ``test`` and one per metric (explicit, else the assertion type),
    each the weight-averaged score of its assertions, passed when all of them passed."""
    details = {"description": case.description} if case.description else {}
    scores = [Score(TEST_METRIC, clamp(result.score), result.passed, result.reason, details)]
    groups: dict[str, list[tuple[Assertion, Verdict]]] = {}
    for assertion, verdict in result.components:
        name = assertion.metric or assertion.type
        if name == TEST_METRIC:
            name = f"{TEST_METRIC} (metric)"
        groups.setdefault(name, []).append((assertion, verdict))
    for name, parts in groups.items():
        weights = math.fsum(a.weight for a, _ in parts)
        if weights > 0:
            value = math.fsum(v.score * a.weight for a, v in parts) / weights
        else:
            value = math.fsum(v.score for _, v in parts) / len(parts)
        passed = all(v.passed or a.weight == 0 for a, v in parts)
        reasons = "; ".join(v.reason for _, v in parts)[:2000]
        scores.append(Score(name, clamp(value), passed, reasons, {}))
    return tuple(scores)


def _error_scores(planned: _Planned, error: str) -> tuple[Score, ...]:
    names = {TEST_METRIC}
    for a in planned.asserts:
        names.add(a.metric or a.type)
    reason = f"no output: {error}"
    return tuple(Score(n, 0.0, False, reason, {"error": True}) for n in sorted(names))


# -- running ------------------------------------------------------------------------------------


def _create_run(
    engine: sa.Engine,
    project_id: int,
    plan: SuitePlan,
    target: _Target,
    dataset: store.DatasetInfo,
) -> str:
    """Record the (prompt, provider) run, its target described for the runs list."""
    provider = target.provider
    return store.create_run(
        engine,
        project_id,
        target_key=target.key,
        target={
            "kind": "promptfoo",
            "config": str(plan.suite.path),
            "prompt": target.prompt.label,
            "provider": provider.id,
            "model": provider.model,
        },
        target_hash=target.target_hash,
        dataset=dataset,
        scorers=[{"type": "promptfoo", "config": str(plan.suite.path)}],
        params=dict(provider.params),
        repeats=1,
    )


def _cache_keys(target: _Target) -> dict[str, str]:
    """Each test's output cache key, by item id.

    Keyed by what is sent (the rendered messages), not by the item: editing a test's
    assertions must not call the model again.
    """
    params_hash = store.stable_hash(dict(target.provider.params))
    return {
        p.item.id: store.cache_key(
            target.target_hash, store.stable_hash(p.messages), params_hash, 0
        )
        for p in target.tests
    }


@dataclass
class _TargetRun:
    """One target's tests in flight: where outputs come from, where results go, the counts."""

    target: _Target
    result: TargetResult
    keys: dict[str, str]
    cache: dict[str, store.CachedOutput]
    caller: _Caller
    recorder: _Recorder
    runtime: Runtime
    semaphore: asyncio.Semaphore
    progress: Progress | None
    bar: TaskID | None

    async def run_test(self, planned: _Planned) -> None:
        """Get the test's output (echoed, cached or called), grade it, count and record it."""
        key = self.keys[planned.item.id]
        hit = self.cache.get(key)
        output, error, trace_id = await self._output(planned, hit)
        unjudged: str | None = None
        scores: tuple[Score, ...]
        if error is None:
            try:
                graded = await _grade(planned, output, self.target.provider, self.runtime)
            except ScoreError as exc:
                # Unjudged, the test has no score at all (a judge's fault is no score of 0).
                error = unjudged = str(exc)
                scores = ()
            else:
                scores = self._count_graded(planned, graded)
        else:
            scores = _error_scores(planned, error)
        if error is not None:
            self._count_error(planned, error)
        self.recorder.add(
            store.RecordedResult(
                planned.item.id, 0, output.text if error is None or unjudged else None, key, scores,
                output.latency_ms, output.cost_usd, trace_id, error, cached=hit is not None,
            )
        )  # fmt: skip
        if self.progress is not None and self.bar is not None:
            self.progress.advance(self.bar)

    async def _output(
        self, planned: _Planned, hit: store.CachedOutput | None
    ) -> tuple[Output, str | None, str | None]:
        """The test's output, the error that left it without one, and its trace id."""
        provider = self.target.provider
        if provider.kind == "echo":
            return Output(planned.prompt_text, 0.0, 0.0), None, None
        if hit is not None:
            self.result.cached += 1
            return Output(hit.output, hit.latency_ms, hit.cost_usd), None, hit.trace_id
        async with self.semaphore:
            call = await self.caller.call(str(provider.model), planned.messages, provider.params)
        self.result.calls += call.calls
        if call.error is not None or call.text is None:
            return Output("", call.latency_ms), call.error or "no output", call.trace_id
        output = Output(call.text, call.latency_ms, call.cost_usd, call.tool_calls, call.raw)
        return output, None, call.trace_id

    def _count_graded(self, planned: _Planned, graded: TestGrade) -> tuple[Score, ...]:
        """Count a graded test as passed or failed; its scores to store."""
        result = self.result
        result.score_sum += graded.score
        for metric, (value, _) in graded.named.items():
            result.named.setdefault(metric, []).append(value)
        if graded.passed:
            result.passed += 1
        else:
            result.failed += 1
            result.failures.append((planned.case.description or planned.item.id, graded.reason))
        return _scores(graded, planned.case)

    def _count_error(self, planned: _Planned, error: str) -> None:
        """Count a test left without an output or a grade as an error."""
        self.result.errors += 1
        self.result.failures.append(
            (planned.case.description or planned.item.id, f"error: {error}")
        )


def _run_summary(result: TargetResult, items: int) -> dict[str, Any]:
    """What the finished run stores as its summary: the eval counts and promptfoo's own."""
    return {
        "items": items,
        "repeats": 1,
        "results": result.total,
        "calls": result.calls,
        "cached": result.cached,
        "errors": result.errors,
        "metrics": result.metrics,
        "promptfoo": {
            "passed": result.passed,
            "failed": result.failed,
            "errors": result.errors,
            "pass_rate": round(result.passed / result.total, 4) if result.total else 1.0,
            "named_metrics": {
                k: round(math.fsum(v) / len(v), 4) for k, v in result.named.items() if v
            },
        },
    }


async def _run_target(
    engine: sa.Engine,
    project_id: int,
    plan: SuitePlan,
    target: _Target,
    dataset: store.DatasetInfo,
    *,
    session: aiohttp.ClientSession,
    gateway_url: str,
    api_key: str,
    concurrency: int,
    use_cache: bool,
    runtime: Runtime,
    progress: Progress | None,
    price: Any,
) -> TargetResult:
    """One (prompt, provider) pair's tests, concurrently, as one stored eval run."""
    provider = target.provider
    run_id = await asyncio.to_thread(_create_run, engine, project_id, plan, target, dataset)
    result = TargetResult(run_id, target.key, target.prompt.label, provider.label)
    keys = _cache_keys(target)
    cache: dict[str, store.CachedOutput] = {}
    if use_cache and target.cacheable and provider.kind == "gateway":
        cache = await asyncio.to_thread(_cached, engine, project_id, list(keys.values()))
    recorder = _Recorder(engine, project_id, run_id, replace=False)
    run = _TargetRun(
        target, result, keys, cache,
        caller=_Caller(session, gateway_url, api_key, RetryPolicy(), run_id, price),
        recorder=recorder, runtime=runtime, semaphore=asyncio.Semaphore(concurrency),
        progress=progress,
        bar=progress.add_task(target.key, total=len(target.tests)) if progress else None,
    )  # fmt: skip
    status: Literal["completed", "failed"] = "failed"
    try:
        await gather_or_cancel([run.run_test(p) for p in target.tests])
        await recorder.close()
        status = "completed"
    finally:
        if status != "completed":
            with contextlib.suppress(BaseException):
                await recorder.close()
            await asyncio.to_thread(store.finish_run, engine, project_id, run_id, "failed")
    result.metrics = await asyncio.to_thread(_metric_summary, engine, project_id, run_id)
    summary = _run_summary(result, len(target.tests))
    await asyncio.to_thread(store.finish_run, engine, project_id, run_id, status, summary)
    return result


async def run_suite(
    engine: sa.Engine,
    project_id: int,
    plan: SuitePlan,
    *,
    gateway_url: str,
    api_key: str,
    concurrency: int = 8,
    use_cache: bool = True,
    console: Console | None = None,
    price: Any = None,
) -> SuiteResult:
    """Store the suite's dataset, then run every target in turn (tests concurrently)."""
    suite = plan.suite
    try:
        pushed = await asyncio.to_thread(
            store.push_dataset, engine, project_id, suite.dataset, list(plan.items)
        )
    except DatasetError as exc:
        raise PromptfooError(f"dataset {suite.dataset!r}: {exc}") from None
    started = time.perf_counter()
    runtime = Runtime()
    base = suite.path.resolve().parent
    progress = progress_bar(console)
    results: list[TargetResult] = []
    async with contextlib.AsyncExitStack() as stack:
        if plan.needs_python:
            runtime.python = await stack.enter_async_context(
                ScriptPool(
                    "python", cwd=base, size=suite.workers, timeout_s=suite.assertion_timeout_s
                )
            )
        if plan.needs_javascript:
            runtime.javascript = await stack.enter_async_context(
                ScriptPool(
                    "javascript", cwd=base, size=suite.workers, timeout_s=suite.assertion_timeout_s
                )
            )
        if plan.judge is not None:
            await stack.enter_async_context(plan.judge)
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        if progress is not None:
            progress.start()
            stack.callback(progress.stop)
        for target in plan.targets:
            results.append(
                await _run_target(
                    engine, project_id, plan, target, pushed.info, session=session,
                    gateway_url=gateway_url, api_key=api_key, concurrency=concurrency,
                    use_cache=use_cache, runtime=runtime, progress=progress, price=price,
                )
            )  # fmt: skip
    return SuiteResult(results, time.perf_counter() - started)
