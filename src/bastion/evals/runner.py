"""The eval runner: call the system under test for every dataset item, score, store as it goes.

Two steps. :func:`plan_run` (or :func:`plan_resume`) does everything that can fail *before* a
model is called: resolve the dataset version and the target (a registry prompt by label or
version, or a plain gateway model), build the scorers, check that every item has every variable
the template and the scorers need. Each problem is an :class:`EvalSetupError`. Then
:func:`run_eval` calls the gateway's ``/v1/chat/completions`` for each (item, repeat):

* at most ``concurrency`` calls in flight (one pooled aiohttp session);
* transient failures (429, 5xx, connection errors, timeouts) are retried with exponential
  backoff, at least the server's ``Retry-After`` (bounded); other 4xx are recorded as errors;
* an output stored under the same cache key (target, item content, params, repeat) by an
  earlier run of the project is reused without a call, and scored again;
* every result and its scores are stored as they complete, in small group-committed batches
  on a worker thread, so an interrupted run loses nothing already answered and
  ``plan_resume`` + :func:`run_eval` finishes it, skipping stored (item, repeat) pairs;
* the gateway's ``x-bastion-trace-id`` is kept with each result.

A call that still fails is stored with its error and scores 0 (failed) on every metric, so a
candidate that errors cannot pass a gate by having fewer paired items; a resumed run redoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item, check_variables
from bastion.evals.scorers.base import Output, Score, ScorerError
from bastion.evals.scorers.registry import ConfiguredScorer, ScorerContext, make_scorer
from bastion.prompts import PromptSpec, PromptSpecError, TemplateError, render

__all__ = [
    "EvalPlan",
    "EvalSetupError",
    "RetryPolicy",
    "RunSummary",
    "Target",
    "parse_target",
    "plan_resume",
    "plan_run",
    "run_eval",
]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_BATCH_MAX = 256  # results per write transaction
_LINGER_S = 0.1  # a write waits this long for company (a close or a full batch cuts it short)


class EvalSetupError(ValueError):
    """The run cannot start: unknown dataset, prompt, label or scorer type, items lacking
    variables, an unusable target. Nothing was called."""


# -- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What to evaluate: a registry prompt (``name`` with ``label`` or ``version``; the newest
    version when neither) or, with ``kind="model"``, a gateway model alias ``name``."""

    kind: Literal["prompt", "model"]
    name: str
    label: str | None = None
    version: int | None = None

    @property
    def key(self) -> str:
        """``name@label``, ``name:3``, ``name@latest`` or ``model:alias``."""
        if self.kind == "model":
            return f"model:{self.name}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.label or 'latest'}"


def parse_target(text: str) -> Target:
    """``name``, ``name@label`` or ``name:VERSION`` (``name:v3`` too) as a prompt target."""
    text = text.strip()
    if "@" in text:
        name, _, label = text.partition("@")
        if not name or not label:
            raise EvalSetupError(f"{text!r}: use NAME, NAME@LABEL or NAME:VERSION")
        return Target("prompt", name, label=label)
    if ":" in text:
        name, _, raw = text.partition(":")
        raw = raw.removeprefix("v")
        if not name or not raw.isdigit() or int(raw) < 1:
            raise EvalSetupError(f"{text!r}: use NAME, NAME@LABEL or NAME:VERSION")
        return Target("prompt", name, version=int(raw))
    if not text:
        raise EvalSetupError("an empty prompt name")
    return Target("prompt", text)


@dataclass(frozen=True, slots=True)
class _Resolved:
    target: Target
    description: dict[str, Any]  # stored with the run
    target_hash: str
    model: str
    params: dict[str, Any]
    spec: PromptSpec | None = None
    partials: Mapping[str, PromptSpec] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()  # variables the prompt accepts


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of transient gateway failures: ``attempts`` in all, backoff ``base_delay_s``
    doubling up to ``max_delay_s`` (full jitter), at least ``Retry-After`` but never more than
    ``retry_after_max_s``; ``timeout_s`` bounds one attempt."""

    attempts: int = 4
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0
    retry_after_max_s: float = 30.0
    timeout_s: float = 120.0


@dataclass
class EvalPlan:
    """A run ready to go: nothing in it can fail for want of a variable, a scorer or a prompt.

    ``run_id`` is set by :func:`run_eval` when it records the run (or by :func:`plan_resume`).
    """

    project_id: int
    dataset: store.StoredDataset
    resolved: _Resolved
    scorers: tuple[ConfiguredScorer, ...]
    scorer_specs: tuple[dict[str, Any], ...]
    repeats: int
    run_id: str | None = None
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def target_key(self) -> str:
        return self.resolved.target.key

    @property
    def params_hash(self) -> str:
        return store.stable_hash(self.resolved.params)


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    status: Literal["completed", "failed"]
    items: int
    repeats: int
    results: int  # (item, repeat) pairs stored in this invocation
    skipped: int  # pairs already stored (resume)
    calls: int  # gateway calls made (retries included)
    cached: int  # pairs answered from the output cache
    errors: int
    wall_s: float
    cost_usd: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    metrics: dict[str, dict[str, float]]  # metric -> {mean, pass_rate, n}

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "repeats": self.repeats,
            "results": self.results,
            "skipped": self.skipped,
            "calls": self.calls,
            "cached": self.cached,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "cost_usd": self.cost_usd,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "metrics": self.metrics,
        }


# -- planning -----------------------------------------------------------------------------------


def _resolve_target(
    conn: sa.Connection,
    project_id: int,
    target: Target,
    *,
    model: str | None,
    params: Mapping[str, Any],
) -> _Resolved:
    if target.kind == "model":
        description: dict[str, Any] = {"kind": "model", "name": target.name, "model": target.name}
        return _Resolved(
            target=target,
            description=description,
            target_hash=store.stable_hash(description),
            model=target.name,
            params=dict(params),
        )
    from bastion.prompts import registry

    try:
        found = registry.get(
            conn, project_id, target.name, label=target.label, version=target.version
        )
    except registry.RegistryError as exc:
        raise EvalSetupError(str(exc)) from None
    try:
        spec = PromptSpec.from_dict(found.spec)
        partials = {name: PromptSpec.from_dict(s) for name, s in found.partials.items()}
    except PromptSpecError as exc:  # pragma: no cover - the registry validated it
        raise EvalSetupError(f"prompt {target.name!r} v{found.version}: {exc}") from None
    chosen = model or spec.model
    if not chosen:
        raise EvalSetupError(
            f"prompt {target.name!r} v{found.version} names no model: give --model"
        )
    merged = {**dict(spec.params), **dict(params)}
    if spec.tools is not None:
        merged.setdefault("tools", [dict(t) for t in spec.tools])
    if spec.response_format is not None:
        merged.setdefault("response_format", dict(spec.response_format))
    declared: set[str] = set(spec.variables)
    for partial in partials.values():
        declared |= set(partial.variables)
    description = {
        "kind": "prompt",
        "name": target.name,
        "label": target.label,
        "version": found.version,
        "content_hash": found.content_hash,
        "model": chosen,
    }
    return _Resolved(
        target=target,
        description=description,
        target_hash=store.stable_hash(
            {"prompt": found.content_hash, "partials": found.partial_versions, "model": chosen}
        ),
        model=chosen,
        params=merged,
        spec=spec,
        partials=partials,
        declared=frozenset(declared),
    )


def _required_variables(resolved: _Resolved) -> set[str]:
    if resolved.spec is None:
        return set()
    required = {n for n, v in resolved.spec.variables.items() if v.required}
    for partial in resolved.partials.values():
        required |= {
            n
            for n, v in partial.variables.items()
            if v.required and n not in resolved.spec.variables
        }
    return required


def _check_model_items(items: Sequence[Item]) -> None:
    bad = []
    for item in items:
        messages = item.vars.get("messages")
        text = item.vars.get("input")
        if isinstance(text, str) or (isinstance(messages, list) and messages):
            continue
        bad.append(item.id)
    if bad:
        shown = ", ".join(repr(i) for i in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise EvalSetupError(
            f"{len(bad)} of {len(items)} items have neither an 'input' string nor a 'messages' "
            f"list, which a model target needs: {shown}"
        )


def _build_scorers(
    specs: Sequence[Mapping[str, Any]], context: ScorerContext | None
) -> tuple[ConfiguredScorer, ...]:
    if not specs:
        raise EvalSetupError("no scorers: give at least one --scorer or --scorers FILE")
    built: list[ConfiguredScorer] = []
    for index, spec in enumerate(specs, start=1):
        try:
            scorer = make_scorer(spec, context=context)
        except ScorerError as exc:
            raise EvalSetupError(f"scorer {index}: {exc}") from None
        assert isinstance(scorer, ConfiguredScorer)
        built.append(scorer)
    names = [s.name for s in built]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalSetupError(
            f"two scorers report the metric {dupes[0]!r}: give one of them a 'metric' name"
        )
    return tuple(built)


def _plan(
    conn: sa.Connection,
    project_id: int,
    dataset: store.StoredDataset,
    target: Target,
    scorer_specs: Sequence[Mapping[str, Any]],
    *,
    repeats: int,
    model: str | None,
    params: Mapping[str, Any],
    context: ScorerContext | None,
) -> EvalPlan:
    if repeats < 1:
        raise EvalSetupError(f"repeats must be at least 1, got {repeats}")
    if not dataset.items:
        raise EvalSetupError(f"dataset {dataset.ref} has no items")
    resolved = _resolve_target(conn, project_id, target, model=model, params=params)
    scorers = _build_scorers(scorer_specs, context)
    try:
        check_variables(dataset.items, _required_variables(resolved))
        needed: set[str] = set()
        for scorer in scorers:
            needed |= scorer.variables
        if needed:
            check_variables(dataset.items, needed)
    except DatasetError as exc:
        raise EvalSetupError(f"dataset {dataset.ref}: {exc}") from None
    if resolved.spec is None:
        _check_model_items(dataset.items)
    # Render every item now (kept for the calls): a template error surfaces before any call.
    messages: dict[str, list[dict[str, Any]]] = {}
    for item in dataset.items:
        try:
            messages[item.id] = _render(resolved, item)
        except TemplateError as exc:
            raise EvalSetupError(
                f"prompt {target.key}: item {item.id!r} does not render: {exc}"
            ) from None
    return EvalPlan(
        project_id=project_id,
        dataset=dataset,
        resolved=resolved,
        scorers=scorers,
        scorer_specs=tuple(dict(s) for s in scorer_specs),
        repeats=repeats,
        messages=messages,
    )


def plan_run(
    engine: sa.Engine,
    project_id: int,
    *,
    dataset: str,
    dataset_version: int | None = None,
    target: Target,
    scorers: Sequence[Mapping[str, Any]],
    repeats: int = 1,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    context: ScorerContext | None = None,
) -> EvalPlan:
    """Check everything a run needs before any model call.

    Raises:
        EvalSetupError: naming what is wrong.
    """
    with engine.connect() as conn:
        try:
            stored = store.get_dataset(conn, project_id, dataset, dataset_version)
        except store.EvalStoreError as exc:
            raise EvalSetupError(str(exc)) from None
        return _plan(
            conn,
            project_id,
            stored,
            target,
            scorers,
            repeats=repeats,
            model=model,
            params=params or {},
            context=context,
        )


def plan_resume(
    engine: sa.Engine, project_id: int, run_id: str, *, context: ScorerContext | None = None
) -> EvalPlan:
    """The plan of an earlier run, to finish it: same dataset version, the prompt *version*
    it resolved to (not where its label points now), scorers, params and repeats."""
    with engine.connect() as conn:
        try:
            info = store.get_run(conn, project_id, run_id)
            stored = store.get_dataset(conn, project_id, info.dataset_name, info.dataset_version)
        except store.EvalStoreError as exc:
            raise EvalSetupError(str(exc)) from None
        if info.status == "completed":
            raise EvalSetupError(f"eval run {run_id} is already completed")
        described = info.target
        if described.get("kind") == "model":
            target = Target("model", str(described["name"]))
            model = None
        else:
            target = Target("prompt", str(described["name"]), version=int(described["version"]))
            model = str(described["model"])
        run_params = dict(info.params)
        plan = _plan(
            conn,
            project_id,
            stored,
            target,
            info.scorers,
            repeats=info.repeats,
            model=model,
            params=run_params,
            context=context,
        )
    if plan.resolved.target_hash != info.target_hash:
        raise EvalSetupError(f"eval run {run_id}: its target changed since it started")
    plan.run_id = run_id
    return plan


# -- calling ---------------------------------------------------------------------------------


def _render(resolved: _Resolved, item: Item) -> list[dict[str, Any]]:
    if resolved.spec is None:
        messages = item.vars.get("messages")
        if isinstance(messages, list) and messages:
            return [dict(m) for m in messages]
        return [{"role": "user", "content": str(item.vars["input"])}]
    variables = {k: v for k, v in item.vars.items() if k in resolved.declared}
    rendered = render(resolved.spec, variables, resolved.partials)
    if isinstance(rendered, str):
        return [{"role": "user", "content": rendered}]
    return rendered


@dataclass(slots=True)
class _CallResult:
    text: str | None
    latency_ms: float
    cost_usd: float | None
    trace_id: str | None
    tool_calls: tuple[Mapping[str, Any], ...]
    raw: Any
    error: str | None
    calls: int


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_text(status: int, body: bytes) -> str:
    try:
        data = orjson.loads(body)
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
    except orjson.JSONDecodeError:
        message = None
    if not message:
        message = body[:300].decode("utf-8", "replace")
    return f"HTTP {status}: {message}"


class _Caller:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str,
        retry: RetryPolicy,
        run_id: str,
        price: Any,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "x-bastion-feature": "eval",
            "x-bastion-session": run_id,
        }
        self.retry = retry
        self.timeout = aiohttp.ClientTimeout(total=retry.timeout_s)
        self.price = price

    async def call(
        self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> _CallResult:
        body = orjson.dumps({**dict(params), "model": model, "messages": messages, "stream": False})
        error = "no attempt made"
        started = time.perf_counter()
        for attempt in range(1, self.retry.attempts + 1):
            started = time.perf_counter()
            wait: float | None = None
            try:
                async with self.session.post(
                    self.url, data=body, headers=self.headers, timeout=self.timeout
                ) as response:
                    raw = await response.read()
                    trace_id = response.headers.get("x-bastion-trace-id")
                    if response.status == 200:
                        latency = (time.perf_counter() - started) * 1000
                        return self._parse(raw, latency, trace_id, attempt)
                    error = _error_text(response.status, raw)
                    if response.status not in RETRYABLE_STATUS:
                        return _CallResult(
                            None, (time.perf_counter() - started) * 1000, None, trace_id, (),
                            None, error, attempt,
                        )  # fmt: skip
                    wait = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt == self.retry.attempts:
                break
            ceiling = min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** (attempt - 1))
            delay = random.uniform(0, ceiling)
            if wait is not None:
                delay = max(delay, min(wait, self.retry.retry_after_max_s))
            await asyncio.sleep(delay)
        return _CallResult(
            None, (time.perf_counter() - started) * 1000, None, None, (), None,
            f"{error} (after {self.retry.attempts} attempts)", self.retry.attempts,
        )  # fmt: skip

    def _parse(self, raw: bytes, latency: float, trace_id: str | None, calls: int) -> _CallResult:
        try:
            data = orjson.loads(raw)
            message = data["choices"][0]["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return _CallResult(
                None, latency, None, trace_id, (), None, "unreadable answer from the gateway",
                calls,
            )  # fmt: skip
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        tool_calls = tuple(message.get("tool_calls") or ())
        cost = None
        usage = data.get("usage") or {}
        if self.price is not None and usage:
            cost = self.price(
                data.get("model"), usage.get("prompt_tokens"), usage.get("completion_tokens")
            )
        return _CallResult(content or "", latency, cost, trace_id, tool_calls, data, None, calls)


# -- storing ---------------------------------------------------------------------------------


class _Recorder:
    """Group commit on a worker thread: results queue up while a write is in flight (and for
    up to ``_LINGER_S`` after the first one arrives) and the next write takes them all, so the
    event loop never waits on the database and a fast run makes few transactions. Closing -
    also on cancellation - writes everything pending."""

    def __init__(self, engine: sa.Engine, project_id: int, run_id: str, *, replace: bool) -> None:
        self.replace = replace
        self.engine = engine
        self.project_id = project_id
        self.run_id = run_id
        self.pending: list[store.RecordedResult] = []
        self.wakeup = asyncio.Event()
        self.flush = asyncio.Event()
        self.closed = False
        self.failure: BaseException | None = None
        self.task = asyncio.create_task(self._loop())

    def add(self, result: store.RecordedResult) -> None:
        if self.failure is not None:
            raise self.failure
        self.pending.append(result)
        self.wakeup.set()
        if len(self.pending) >= _BATCH_MAX:
            self.flush.set()

    async def _loop(self) -> None:
        while True:
            await self.wakeup.wait()
            if not self.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.flush.wait(), _LINGER_S)
            self.wakeup.clear()
            self.flush.clear()
            while self.pending:
                batch, self.pending = self.pending[:_BATCH_MAX], self.pending[_BATCH_MAX:]
                try:
                    await asyncio.to_thread(
                        store.record_results, self.engine, self.project_id, self.run_id, batch,
                        replace=self.replace,
                    )  # fmt: skip
                except BaseException as exc:
                    self.failure = exc
                    self.pending[:0] = batch
                    raise
            if self.closed:
                return

    async def close(self) -> None:
        """Write everything pending (also when the run is being cancelled)."""
        self.closed = True
        self.wakeup.set()
        self.flush.set()
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            # Cancelled while flushing: finish the flush before passing the cancellation on.
            with contextlib.suppress(BaseException):
                await self.task
            raise
        if self.failure is not None:
            raise self.failure


def _error_scores(scorers: Sequence[ConfiguredScorer], error: str) -> tuple[Score, ...]:
    return tuple(Score(s.name, 0.0, False, f"no output: {error}", {"error": True}) for s in scorers)


async def _score(
    scorers: Sequence[ConfiguredScorer], output: Output, item: Item
) -> tuple[Score, ...]:
    scores: list[Score] = []
    for scorer in scorers:
        try:
            scores.append(await scorer.score(output, item))
        except Exception as exc:  # noqa: BLE001 - one broken scorer must not lose the output
            scores.append(Score(scorer.name, 0.0, False, f"scorer failed: {exc}", {"error": True}))
    return tuple(scores)


# -- the run ---------------------------------------------------------------------------------


async def run_eval(
    engine: sa.Engine,
    plan: EvalPlan,
    *,
    gateway_url: str,
    api_key: str,
    concurrency: int = 8,
    use_cache: bool = True,
    retry: RetryPolicy | None = None,
    console: Console | None = None,
    price: Any = None,
) -> RunSummary:
    """Run ``plan`` (recording a new run unless ``plan.run_id`` is set, i.e. a resume) and
    return its summary. ``console`` shows a progress bar; ``price(model, input_tokens,
    output_tokens) -> USD | None`` prices each call.

    Cancelling the task stores every result already answered and leaves the run ``running``
    for a resume; an unexpected exception marks it ``failed`` (also resumable).
    """
    if concurrency < 1:
        raise EvalSetupError(f"concurrency must be at least 1, got {concurrency}")
    retry = retry or RetryPolicy()
    resolved = plan.resolved
    resuming = plan.run_id is not None
    if plan.run_id is None:
        plan.run_id = await asyncio.to_thread(
            store.create_run,
            engine,
            plan.project_id,
            target_key=plan.target_key,
            target=resolved.description,
            target_hash=resolved.target_hash,
            dataset=plan.dataset.info,
            scorers=plan.scorer_specs,
            params=resolved.params,
            repeats=plan.repeats,
        )
        done: set[tuple[str, int]] = set()
    else:
        await asyncio.to_thread(store.finish_run, engine, plan.project_id, plan.run_id, "running")
        done = await asyncio.to_thread(_finished, engine, plan.project_id, plan.run_id)
    run_id = plan.run_id
    params_hash = plan.params_hash
    work: list[tuple[Item, int, str]] = []
    for item in plan.dataset.items:
        item_hash = plan.dataset.item_hashes.get(item.id) or item.content_hash()
        for repeat in range(plan.repeats):
            if (item.id, repeat) in done:
                continue
            key = store.cache_key(resolved.target_hash, item_hash, params_hash, repeat)
            work.append((item, repeat, key))
    cache: dict[str, store.CachedOutput] = {}
    if use_cache and work:
        cache = await asyncio.to_thread(
            _cached, engine, plan.project_id, [key for _, _, key in work]
        )

    counters = {"calls": 0, "cached": 0, "errors": 0, "results": 0}
    latencies: list[float] = []
    costs: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    progress = (
        Progress(
            TextColumn("[bold]eval[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        if console is not None
        else None
    )
    bar = progress.add_task(plan.target_key, total=len(work)) if progress else None
    # A fresh run has no rows to replace; a resumed one may hold failed results to redo.
    recorder = _Recorder(engine, plan.project_id, run_id, replace=bool(done) or resuming)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    status: Literal["completed", "failed"] = "failed"
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            caller = _Caller(session, gateway_url, api_key, retry, run_id, price)

            async def one(item: Item, repeat: int, key: str) -> None:
                hit = cache.get(key)
                if hit is not None:
                    output = Output(hit.output, hit.latency_ms, hit.cost_usd)
                    scores = await _score(plan.scorers, output, item)
                    recorder.add(
                        store.RecordedResult(
                            item.id, repeat, hit.output, key, scores, hit.latency_ms,
                            hit.cost_usd, hit.trace_id, None, cached=True,
                        )
                    )  # fmt: skip
                    counters["cached"] += 1
                else:
                    async with semaphore:
                        result = await caller.call(
                            resolved.model, plan.messages[item.id], resolved.params
                        )
                    counters["calls"] += result.calls
                    if result.error is not None or result.text is None:
                        error = result.error or "no output"
                        scores = _error_scores(plan.scorers, error)
                        counters["errors"] += 1
                    else:
                        output = Output(
                            result.text, result.latency_ms, result.cost_usd, result.tool_calls,
                            result.raw,
                        )  # fmt: skip
                        scores = await _score(plan.scorers, output, item)
                        latencies.append(result.latency_ms)
                        if result.cost_usd is not None:
                            costs.append(result.cost_usd)
                    recorder.add(
                        store.RecordedResult(
                            item.id, repeat, result.text, key, scores, result.latency_ms,
                            result.cost_usd, result.trace_id, result.error,
                        )
                    )  # fmt: skip
                counters["results"] += 1
                if progress is not None and bar is not None:
                    progress.advance(bar)

            if progress is not None:
                progress.start()
            tasks = [asyncio.ensure_future(one(i, r, k)) for i, r, k in work]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                # gather leaves the other tasks running on an error: stop them first.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                if progress is not None:
                    progress.stop()
        await recorder.close()
        status = "completed"
    except asyncio.CancelledError:
        await recorder.close()
        raise
    except BaseException:
        with contextlib.suppress(BaseException):
            await recorder.close()
        await asyncio.to_thread(store.finish_run, engine, plan.project_id, run_id, "failed")
        raise
    wall = time.perf_counter() - started
    metrics = await asyncio.to_thread(_metric_summary, engine, plan.project_id, run_id)
    ordered = sorted(latencies)
    summary = RunSummary(
        run_id=run_id,
        status=status,
        items=len(plan.dataset.items),
        repeats=plan.repeats,
        results=counters["results"],
        skipped=len(done),
        calls=counters["calls"],
        cached=counters["cached"],
        errors=counters["errors"],
        wall_s=wall,
        cost_usd=math.fsum(costs) if costs else None,
        latency_p50_ms=round(statistics.median(ordered), 2) if ordered else None,
        latency_p95_ms=round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)
        if ordered
        else None,
        metrics=metrics,
    )
    await asyncio.to_thread(
        store.finish_run, engine, plan.project_id, run_id, status, summary.to_dict()
    )
    return summary


def _finished(engine: sa.Engine, project_id: int, run_id: str) -> set[tuple[str, int]]:
    with engine.connect() as conn:
        return store.finished_pairs(conn, project_id, run_id)


def _cached(engine: sa.Engine, project_id: int, keys: list[str]) -> dict[str, store.CachedOutput]:
    with engine.connect() as conn:
        return store.cached_outputs(conn, project_id, keys)


def _metric_summary(engine: sa.Engine, project_id: int, run_id: str) -> dict[str, dict[str, float]]:
    from bastion.store.schema import eval_scores

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                eval_scores.c.metric,
                sa.func.avg(eval_scores.c.value),
                sa.func.avg(sa.case((eval_scores.c.passed, 1.0), else_=0.0)),
                sa.func.count(),
            )
            .where(eval_scores.c.project_id == project_id, eval_scores.c.run_id == run_id)
            .group_by(eval_scores.c.metric)
            .order_by(eval_scores.c.metric)
        ).all()
    return {
        r[0]: {"mean": round(float(r[1]), 4), "pass_rate": round(float(r[2]), 4), "n": int(r[3])}
        for r in rows
    }
