"""Replay: recorded production inputs re-run against a candidate release, compared with what
production answered.

The traces are chosen with a compact filter (``since=24h,feature=checkout,error=server_error``,
see :func:`parse_filter`) through the same selection as datasets made from traces
(``evals.from_traces``), so prompt requests replay with their recorded variables and plain
requests with their recorded messages. Each input is sent through a running gateway shaped by
the candidate — its model, parameters, tools and pinned prompt version, exactly as a route
serving it would — without deploying it anywhere (requests carry ``x-bastion-feature: replay``,
and ``x-bastion-cache: no-cache`` so every answer is the candidate's own, never a cached one).
A request the gateway's own rate limits or budgets refuse is reported apart, not as a
candidate error.
Each answer is scored against the recorded one (default: ``levenshtein`` similarity; any
reference-based scorer of the evals works), and the report lists the summary and the inputs
whose answers moved most.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import sqlalchemy as sa

from bastion.evals.datasets import Item
from bastion.evals.from_traces import TraceSelection, parse_output, snapshot
from bastion.evals.scorers import Output, Scorer
from bastion.releases.model import ReleaseSpec, ReleaseSpecError
from bastion.store.schema import spans, traces

__all__ = [
    "ReplayResult",
    "build_request",
    "load_items",
    "parse_filter",
    "render_markdown",
    "run_replay",
]

_AGO = re.compile(r"^(\d+)([mhd])$")
_KEYS = {"since", "until", "feature", "model", "user", "error", "prompt", "limit", "sample"}


def _time(value: str, key: str) -> datetime:
    match = _AGO.match(value)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(match.group(1))})
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ReleaseSpecError(f"{key}={value!r}: give 30m, 24h, 7d or an ISO time") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parse_filter(text: str, *, default_limit: int = 100) -> TraceSelection:
    """``since=24h,feature=checkout,user=u1,model=m,error=server_error,prompt=name@3,limit=50,
    sample=0.5`` as a trace selection; unknown keys and bad values name themselves."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ReleaseSpecError(f"--from-traces: {part!r} is not KEY=VALUE")
        if key not in _KEYS:
            raise ReleaseSpecError(f"--from-traces: unknown key {key!r} (known: {sorted(_KEYS)})")
        values[key] = value
    prompt_name, prompt_version = None, None
    if "prompt" in values:
        name, _, version = values["prompt"].partition("@")
        prompt_name = name
        if version:
            if not version.isdigit():
                raise ReleaseSpecError("--from-traces: prompt=NAME@VERSION needs a number")
            prompt_version = int(version)
    try:
        return TraceSelection(
            since=_time(values["since"], "since") if "since" in values else None,
            until=_time(values["until"], "until") if "until" in values else None,
            feature=values.get("feature"),
            model=values.get("model"),
            user=values.get("user"),
            error_class=values.get("error"),
            prompt_name=prompt_name,
            prompt_version=prompt_version,
            limit=int(values.get("limit", default_limit)),
            sample=float(values.get("sample", 1.0)),
        )
    except ValueError as exc:  # DatasetError is a ValueError too
        raise ReleaseSpecError(f"--from-traces: {exc}") from exc


def load_items(conn: sa.Connection, project_id: int, selection: TraceSelection) -> list[Item]:
    """The selected inputs, each with the recorded answer as ``expected`` (None for errors)."""
    items = list(snapshot(conn, project_id, selection).items)
    outputs: dict[tuple[str, str], Any] = {}
    keys = [(i.metadata["source"]["trace_id"], i.metadata["source"]["span_id"]) for i in items]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = conn.execute(
            sa.select(spans.c.trace_id, spans.c.span_id, spans.c.output)
            .join(
                traces,
                sa.and_(
                    traces.c.project_id == spans.c.project_id, traces.c.seq == spans.c.trace_seq
                ),
            )
            .where(
                traces.c.project_id == project_id,
                traces.c.trace_id.in_([t for t, _ in chunk]),
            )
        )
        outputs.update({(r.trace_id, r.span_id): parse_output(r.output) for r in rows})
    return [
        dataclasses.replace(i, expected=outputs.get(k)) for i, k in zip(items, keys, strict=True)
    ]


def build_request(spec: ReleaseSpec, item: Item) -> dict[str, Any]:
    """The chat request a route serving ``spec`` would send for the recorded input."""
    body: dict[str, Any] = dict(spec.params)
    if spec.tools:
        body["tools"] = [dict(t) for t in spec.tools]
    variables = dict(item.vars)
    if "messages" in variables and isinstance(variables["messages"], list):
        body["messages"] = variables["messages"]
    elif set(variables) == {"input"}:
        body["messages"] = [{"role": "user", "content": str(variables["input"])}]
    else:
        recorded = item.metadata.get("source", {}).get("prompt_name")
        name = recorded if recorded in spec.prompts else None
        if name is None and len(spec.prompts) == 1:
            name = next(iter(spec.prompts))
        if name is None:
            raise ReleaseSpecError(
                f"item {item.id}: recorded prompt {recorded!r} is not pinned by release "
                f"{spec.name!r} (pins: {', '.join(sorted(spec.prompts)) or 'none'})"
            )
        body["prompt"] = {"name": name, "version": spec.prompts[name], "variables": variables}
    body["model"] = spec.model
    return body


@dataclass(frozen=True, slots=True)
class ReplayResult:
    item: Item
    output: str | None
    error: str | None
    latency_ms: float
    scores: Mapping[str, float]
    refused: bool = False  # turned away by the gateway's rate limits or budgets, not the model


# Error codes of the gateway's own admission: the request never reached the candidate's model.
_REFUSAL_CODES = frozenset({"rate_limit_exceeded", "budget_exceeded"})


def _refusal(raw: bytes) -> bool:
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") in _REFUSAL_CODES


def _text(doc: Any) -> str:
    try:
        message = doc["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return ""
    content = message.get("content")
    return content if isinstance(content, str) else orjson.dumps(content).decode()


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    spec: ReleaseSpec,
    item: Item,
    scorers: Sequence[Scorer],
) -> ReplayResult:
    started = time.perf_counter()
    try:
        body = build_request(spec, item)
        async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
            raw = await response.read()
            latency = (time.perf_counter() - started) * 1000
            if response.status >= 400:
                return ReplayResult(
                    item,
                    None,
                    f"{response.status}: {raw[:300].decode(errors='replace')}",
                    latency,
                    {},
                    refused=response.status == 429 and _refusal(raw),
                )
            text = _text(orjson.loads(raw))
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, ReleaseSpecError) as exc:
        return ReplayResult(
            item, None, str(exc) or type(exc).__name__, (time.perf_counter() - started) * 1000, {}
        )
    scores: dict[str, float] = {}
    if item.expected is not None:
        for scorer in scorers:
            scores[scorer.name] = (await scorer.score(Output(text, latency_ms=latency), item)).value
    return ReplayResult(item, text, None, latency, scores)


async def run_replay(
    gateway_url: str,
    key: str,
    spec: ReleaseSpec,
    items: Sequence[Item],
    scorers: Sequence[Scorer],
    *,
    concurrency: int = 8,
) -> list[ReplayResult]:
    """Send every input through the gateway shaped by ``spec``; results in input order."""
    url = gateway_url.rstrip("/") + "/v1/chat/completions"
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "x-bastion-feature": "replay",
        # The candidate answers every input itself: a cached answer would measure the cache.
        "x-bastion-cache": "no-cache",
        "x-bastion-session": f"replay-{uuid.uuid4().hex}",
    }
    slots = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def bounded(item: Item) -> ReplayResult:
            async with slots:
                return await _one(session, url, headers, spec, item, scorers)

        return list(await asyncio.gather(*(bounded(i) for i in items)))


def _cut(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "—"
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_markdown(
    release_id: str, spec: ReleaseSpec, selection: TraceSelection, results: Sequence[ReplayResult]
) -> str:
    """The replay report: summary per metric, errors, and the inputs that changed most."""
    n = len(results)
    errors = [r for r in results if r.error is not None and not r.refused]
    refused = sum(1 for r in results if r.refused)
    recorded_errors = sum(1 for r in results if r.item.expected is None)
    metrics = sorted({m for r in results for m in r.scores})
    chosen = {
        k: v
        for k, v in selection.describe().items()
        if v is not None and k != "expected_from_output"
    }
    prompts = ", ".join(f"`{k}` v{v}" for k, v in spec.prompts.items()) or "none"
    lines = [
        f"# Replay of {n} production inputs against release `{release_id}` ({spec.name})",
        "",
        f"Candidate: model `{spec.model}`, prompts {prompts}. "
        f"Selection: `{orjson.dumps(chosen).decode()}`.",
        "",
        "| | value |",
        "|---|---|",
        f"| inputs replayed | {n} |",
        f"| no answer recorded in production (errors) | {recorded_errors} |",
        f"| errors with the candidate | {len(errors)} |",
        f"| refused by the gateway's rate limits or budgets (not errors) | {refused} |",
    ]
    for metric in metrics:
        values = [r.scores[metric] for r in results if metric in r.scores]
        mean = sum(values) / len(values)
        lines.append(f"| mean {metric} vs production ({len(values)} scored) | {mean:.3f} |")
    latencies = sorted(r.latency_ms for r in results if not r.refused)
    if latencies:
        lines.append(f"| candidate latency p50 | {latencies[len(latencies) // 2]:.0f} ms |")
    if errors:
        lines += ["", "## Candidate errors", "", "| input | error |", "|---|---|"]
        lines += [f"| `{r.item.id}` | {_cut(r.error, 120)} |" for r in errors[:20]]
    if metrics:
        first = metrics[0]
        changed = sorted((r for r in results if first in r.scores), key=lambda r: r.scores[first])
        lines += [
            "",
            f"## Largest changes (lowest {first})",
            "",
            f"| input | {first} | production | candidate |",
            "|---|---|---|---|",
        ]
        for r in changed[:10]:
            production, candidate = _cut(str(r.item.expected)), _cut(r.output)
            lines.append(f"| `{r.item.id}` | {r.scores[first]:.3f} | {production} | {candidate} |")
    return "\n".join(lines) + "\n"
