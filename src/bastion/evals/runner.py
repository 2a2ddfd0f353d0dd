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
A scorer that could not judge an output (:class:`~bastion.evals.scorers.base.ScoreError`: an
LLM judge's unreadable verdict) is not the output's fault: that metric gets no score for the
item, and the result is stored with the error, counted in the run's errors and redone on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import statistics
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson
import sqlalchemy as sa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bastion.evals import store
from bastion.evals.datasets import Item
from bastion.evals.planning import (
    EvalPlan,
    EvalSetupError,
    RetryPolicy,
    RunSummary,
    Target,
    parse_target,
    plan_resume,
    plan_run,
)
from bastion.evals.scorers.base import Output, Score, ScoreError
from bastion.evals.scorers.registry import ConfiguredScorer

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


# -- calling ---------------------------------------------------------------------------------


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
) -> tuple[tuple[Score, ...], str | None]:
    """The output's scores, and the error of the scorers that could not judge it (a judge's
    unreadable verdict): such a metric has no score for the item, which is a run error."""
    scores: list[Score] = []
    unjudged: list[str] = []
    for scorer in scorers:
        try:
            scores.append(await scorer.score(output, item))
        except ScoreError as exc:
            unjudged.append(f"{scorer.name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one broken scorer must not lose the output
            scores.append(Score(scorer.name, 0.0, False, f"scorer failed: {exc}", {"error": True}))
    return tuple(scores), "; ".join(unjudged) or None


# -- the run ---------------------------------------------------------------------------------


async def gather_or_cancel(coros: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; on the first error cancel the rest, wait for them, re-raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # gather leaves the other tasks running on an error: stop them first.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def progress_bar(console: Console | None) -> Progress | None:
    """The eval progress bar shown on ``console``; None when there is no console."""
    if console is None:
        return None
    return Progress(
        TextColumn("[bold]eval[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@dataclass
class _Tally:
    """What a run did so far: the counts, latencies and costs its summary reports."""

    calls: int = 0
    cached: int = 0
    errors: int = 0
    results: int = 0
    latencies: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)

    def summary(
        self,
        plan: EvalPlan,
        run_id: str,
        status: Literal["completed", "failed"],
        *,
        skipped: int,
        wall_s: float,
        metrics: dict[str, dict[str, float]],
    ) -> RunSummary:
        ordered = sorted(self.latencies)
        return RunSummary(
            run_id=run_id,
            status=status,
            items=len(plan.dataset.items),
            repeats=plan.repeats,
            results=self.results,
            skipped=skipped,
            calls=self.calls,
            cached=self.cached,
            errors=self.errors,
            wall_s=wall_s,
            cost_usd=math.fsum(self.costs) if self.costs else None,
            latency_p50_ms=round(statistics.median(ordered), 2) if ordered else None,
            latency_p95_ms=round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)
            if ordered
            else None,
            metrics=metrics,
        )


async def _open_run(engine: sa.Engine, plan: EvalPlan) -> tuple[str, set[tuple[str, int]]]:
    """Record a new run for ``plan`` (setting ``plan.run_id``), or mark the resumed one
    ``running`` again; return its id and the (item, repeat) pairs it already finished."""
    resolved = plan.resolved
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
            kind=plan.kind,
        )
        return plan.run_id, set()
    await asyncio.to_thread(store.finish_run, engine, plan.project_id, plan.run_id, "running")
    done = await asyncio.to_thread(_finished, engine, plan.project_id, plan.run_id)
    return plan.run_id, done


def _pending_work(plan: EvalPlan, done: set[tuple[str, int]]) -> list[tuple[Item, int, str]]:
    """Every (item, repeat) still to answer, with its cache key."""
    work: list[tuple[Item, int, str]] = []
    for item in plan.dataset.items:
        item_hash = plan.dataset.item_hashes.get(item.id) or item.content_hash()
        for repeat in range(plan.repeats):
            if (item.id, repeat) in done:
                continue
            key = store.cache_key(plan.resolved.target_hash, item_hash, plan.params_hash, repeat)
            work.append((item, repeat, key))
    return work


class _ItemRunner:
    """Answers one (item, repeat) at a time, from the cache or a gateway call, scores it,
    hands the result to the recorder and counts it in the tally."""

    def __init__(
        self,
        plan: EvalPlan,
        cache: dict[str, store.CachedOutput],
        caller: _Caller,
        recorder: _Recorder,
        semaphore: asyncio.Semaphore,
        tally: _Tally,
        progress: Progress | None,
        bar: TaskID | None,
    ) -> None:
        self._plan = plan
        self._cache = cache
        self._caller = caller
        self._recorder = recorder
        self._semaphore = semaphore
        self._tally = tally
        self._progress = progress
        self._bar = bar

    async def run_all(self, work: Sequence[tuple[Item, int, str]]) -> None:
        """Answer every pending pair concurrently, with the progress bar shown meanwhile."""
        if self._progress is not None:
            self._progress.start()
        try:
            await gather_or_cancel([self._one(i, r, k) for i, r, k in work])
        finally:
            if self._progress is not None:
                self._progress.stop()

    async def _one(self, item: Item, repeat: int, key: str) -> None:
        hit = self._cache.get(key)
        if hit is not None:
            await self._from_cache(item, repeat, key, hit)
        else:
            await self._from_call(item, repeat, key)
        self._tally.results += 1
        if self._progress is not None and self._bar is not None:
            self._progress.advance(self._bar)

    async def _from_cache(self, item: Item, repeat: int, key: str, hit: store.CachedOutput) -> None:
        output = Output(hit.output, hit.latency_ms, hit.cost_usd)
        scores, unjudged = await _score(self._plan.scorers, output, item)
        self._tally.errors += unjudged is not None
        self._recorder.add(
            store.RecordedResult(
                item.id, repeat, hit.output, key, scores, hit.latency_ms,
                hit.cost_usd, hit.trace_id, unjudged, cached=True,
            )
        )  # fmt: skip
        self._tally.cached += 1

    async def _from_call(self, item: Item, repeat: int, key: str) -> None:
        plan, tally = self._plan, self._tally
        async with self._semaphore:
            result = await self._caller.call(
                plan.resolved.model, plan.messages[item.id], plan.resolved.params
            )
        tally.calls += result.calls
        unjudged = None
        if result.error is not None or result.text is None:
            error = result.error or "no output"
            scores = _error_scores(plan.scorers, error)
            tally.errors += 1
        else:
            output = Output(
                result.text, result.latency_ms, result.cost_usd, result.tool_calls, result.raw
            )
            scores, unjudged = await _score(plan.scorers, output, item)
            tally.errors += unjudged is not None
            tally.latencies.append(result.latency_ms)
            if result.cost_usd is not None:
                tally.costs.append(result.cost_usd)
        self._recorder.add(
            store.RecordedResult(
                item.id, repeat, result.text, key, scores, result.latency_ms,
                result.cost_usd, result.trace_id, result.error or unjudged,
            )
        )  # fmt: skip


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
    resuming = plan.run_id is not None
    run_id, done = await _open_run(engine, plan)
    work = _pending_work(plan, done)
    cache: dict[str, store.CachedOutput] = {}
    if use_cache and work:
        cache = await asyncio.to_thread(
            _cached, engine, plan.project_id, [key for _, _, key in work]
        )

    tally = _Tally()
    semaphore = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    progress = progress_bar(console)
    bar = progress.add_task(plan.target_key, total=len(work)) if progress else None
    # A fresh run has no rows to replace; a resumed one may hold failed results to redo.
    recorder = _Recorder(engine, plan.project_id, run_id, replace=bool(done) or resuming)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    status: Literal["completed", "failed"] = "failed"
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            caller = _Caller(session, gateway_url, api_key, retry, run_id, price)
            runner = _ItemRunner(plan, cache, caller, recorder, semaphore, tally, progress, bar)
            await runner.run_all(work)
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
    summary = tally.summary(plan, run_id, status, skipped=len(done), wall_s=wall, metrics=metrics)
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
