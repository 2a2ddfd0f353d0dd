"""The evals API under ``/api/v1/evals``: datasets (upload, from traces, lock) and runs
(list, one run with its results and scores, paired comparison of two runs).

Reading needs the ``read`` role; creating and locking datasets ``write``. The project is always
the key's: a dataset or run of another project is a 404, exactly like one that does not exist.
Database work (and the bootstrap of a comparison) runs on worker threads.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
import sqlalchemy as sa
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bastion.auth import Permission
from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item, parse_items, parse_text
from bastion.names import DATASET as DATASET_NAME
from bastion.names import InvalidName
from bastion.parsing import InputError, check_size
from bastion.server.audit_trail import request_trail
from bastion.server.auth import authenticate
from bastion.server.db_work import DbWork
from bastion.server.openapi import (
    MAX_VERSION,
    ApiError,
    ApiRoute,
    json_response,
    parse_body,
    parse_query,
)
from bastion.server.route_access import needs
from bastion.services.state import STATE
from bastion.store.schema import eval_results, eval_scores

__all__ = ["EVAL_ROUTES"]

_B = TypeVar("_B", bound=BaseModel)
_BASE = "/api/v1/evals"
_RUN_ID = "{run_id}"


class DatasetOut(BaseModel):
    name: str
    version: int
    content_hash: str
    item_count: int
    locked: bool
    created_at: datetime


class DatasetListOut(BaseModel):
    items: list[DatasetOut] = Field(description="every version, by name then version")


class ItemSource(BaseModel):
    trace_id: str
    span_id: str


class ItemOut(BaseModel):
    id: str
    vars: dict[str, Any]
    expected: Any = None
    tags: list[str]
    metadata: dict[str, Any]
    source: ItemSource | None = Field(None, description="the span it was made from, if any")


class DatasetVersionOut(DatasetOut):
    items: list[ItemOut]


DatasetName = Annotated[
    str,
    AfterValidator(DATASET_NAME.check),
    Field(description=f"{DATASET_NAME.rule} (bastion.names)"),
]


class PushDatasetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DatasetName
    items: list[Any] | None = Field(
        None, description="item objects, as JSONL rows: {vars, expected?, tags?, metadata?, id?}"
    )
    content: str | None = Field(None, description="a whole file's text, in `format`")
    format: Literal["jsonl", "csv", "yaml"] = "jsonl"
    lock: bool = Field(False, description="lock the version (a golden set)")
    force: bool = Field(False, description="add a version even if the newest is locked")


class PushDatasetOut(BaseModel):
    status: Literal["created", "unchanged"]
    dataset: DatasetOut


class FromTracesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(None, max_length=64, description="30m, 24h, 7d or ISO 8601")
    until: str | None = Field(None, max_length=64, description="30m, 24h, 7d or ISO 8601")
    feature: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)
    user: str | None = Field(None, max_length=200)
    error_class: str | None = Field(None, max_length=200)
    prompt: str | None = Field(None, max_length=260, description="NAME, NAME@VERSION or NAME@LABEL")
    limit: int = Field(200, ge=1, le=10_000, description="items at most")
    sample: float = Field(1.0, gt=0, le=1, description="fraction of matching spans kept")
    expected_from_output: bool = False
    lock: bool = False
    force: bool = False


class FromTracesOut(PushDatasetOut):
    matched: int = Field(description="matching spans read")
    skipped: dict[str, int] = Field(description="spans left out, by reason")


class RunOut(BaseModel):
    run_id: str
    kind: str = Field(description="quality or redteam")
    status: str
    target_key: str
    target: dict[str, Any]
    prompt_name: str | None
    prompt_version: int | None
    dataset_name: str
    dataset_version: int
    dataset_hash: str
    scorers: list[dict[str, Any]]
    params: dict[str, Any]
    repeats: int
    started_at: datetime
    finished_at: datetime | None
    summary: dict[str, Any] | None


class RunListOut(BaseModel):
    items: list[RunOut] = Field(description="newest first")


class ScoreOut(BaseModel):
    metric: str
    value: float
    passed: bool
    reason: str
    details: dict[str, Any]


class ResultOut(BaseModel):
    item_id: str
    repeat: int
    output: str | None
    error: str | None
    latency_ms: float | None
    cost_usd: float | None
    trace_id: str | None
    cached: bool
    scores: list[ScoreOut]


class RunDetailOut(RunOut):
    results: list[ResultOut] = Field(description="by item then repeat; paged by limit/offset")
    result_count: int


class GetDatasetQuery(BaseModel):
    version: int | None = Field(
        None, ge=1, le=MAX_VERSION, description="version (default: the newest)"
    )


class RunListQuery(BaseModel):
    dataset: str | None = Field(None, max_length=200)
    kind: Literal["quality", "redteam"] | None = None
    status: Literal["running", "completed", "failed"] | None = None
    prompt: str | None = Field(None, max_length=200, description="prompt name")
    limit: int = Field(50, ge=1, le=1000)


class RunQuery(BaseModel):
    limit: int = Field(1000, ge=1, le=10_000, description="results at most")
    offset: int = Field(0, ge=0, le=MAX_VERSION)


class CompareQuery(BaseModel):
    baseline: str = Field(pattern="^[0-9a-f]{32}$", description="baseline run id")
    candidate: str = Field(pattern="^[0-9a-f]{32}$", description="candidate run id")


class CompareOut(BaseModel):
    run_id: str = Field(description="the candidate run")
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    verdict: dict[str, Any] = Field(description="the gate rules of bastion.yaml applied")
    metrics: list[dict[str, Any]] = Field(
        description="per metric: means, paired delta with its 95% bootstrap CI, McNemar, MDE"
    )
    unpaired_items: list[str]


# -- plumbing ------------------------------------------------------------------------------------


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, store.EvalStoreError):
        return ApiError(404, str(exc), kind="not_found")
    if isinstance(exc, store.DatasetLockedError):
        return ApiError(409, str(exc), kind="dataset_locked")
    return ApiError(400, str(exc))


_db = DbWork((store.EvalStoreError, DatasetError), _api_error)


async def _body(request: web.Request, model: type[_B]) -> _B:
    return parse_body(await request.read() or b"{}", model)


def _dataset_out(info: store.DatasetInfo) -> DatasetOut:
    return DatasetOut(
        name=info.name,
        version=info.version,
        content_hash=info.content_hash,
        item_count=info.item_count,
        locked=info.locked,
        created_at=info.created_at,
    )


def _item_out(item: Item, source: tuple[str, str] | None) -> ItemOut:
    return ItemOut(
        id=item.id,
        vars=dict(item.vars),
        expected=item.expected,
        tags=list(item.tags),
        metadata=dict(item.metadata),
        source=None if source is None else ItemSource(trace_id=source[0], span_id=source[1]),
    )


def _run_out(info: store.RunInfo) -> dict[str, Any]:
    return {
        "run_id": info.run_id,
        "kind": info.kind,
        "status": info.status,
        "target_key": info.target_key,
        "target": dict(info.target),
        "prompt_name": info.prompt_name,
        "prompt_version": info.prompt_version,
        "dataset_name": info.dataset_name,
        "dataset_version": info.dataset_version,
        "dataset_hash": info.dataset_hash,
        "scorers": [dict(s) for s in info.scorers],
        "params": dict(info.params),
        "repeats": info.repeats,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "summary": None if info.summary is None else dict(info.summary),
    }


def _version(request: web.Request) -> int:
    raw = request.match_info["version"].removeprefix("v")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_VERSION:
        raise ApiError(400, f"invalid dataset version {request.match_info['version']!r}")
    return int(raw)


# -- datasets ------------------------------------------------------------------------------------


async def list_datasets(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.EVALS_READ)
    infos = await _db.read(request, lambda c: store.list_datasets(c, principal.project_id))
    return json_response(DatasetListOut(items=[_dataset_out(i) for i in infos]))


def _too_large(exc: DatasetError | InputError) -> ApiError:
    return ApiError(413, f"invalid dataset: {exc}", kind="too_large")


async def push_dataset(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.DATASETS_PUSH)
    limits = request.app[STATE].settings.limits
    raw = await request.read()
    try:
        check_size(len(raw), limits, "the body")
    except InputError as exc:
        raise _too_large(exc) from exc
    body = parse_body(raw or b"{}", PushDatasetBody)
    if (body.items is None) == (body.content is None):
        raise ApiError(400, "give the items either as 'items' (a list) or as 'content' (text)")
    try:
        if body.items is not None:
            items = parse_items(body.items, limits=limits)
        else:
            fmt = body.format
            items = parse_text(str(body.content), fmt, name=f"content.{fmt}", limits=limits)
    except DatasetError as exc:
        if exc.limit == "limits.max_document_bytes":
            raise _too_large(exc) from exc
        raise ApiError(400, f"invalid dataset: {exc}") from exc
    if not items:
        raise ApiError(400, "invalid dataset: no items")
    engine = request.app[STATE].engine
    trail = request_trail(request, principal)
    pushed = await _db.run(
        lambda: store.push_dataset(
            engine,
            principal.project_id,
            body.name,
            items,
            lock=body.lock,
            force=body.force,
            audit=trail,
        )
    )
    out = PushDatasetOut(status=pushed.status, dataset=_dataset_out(pushed.info))
    return json_response(out, 201 if pushed.status == "created" else 200)


def _version_out(conn: sa.Connection, project_id: int, name: str, version: int | None) -> Any:
    found = store.get_dataset(conn, project_id, name, version)
    links = store.item_sources(conn, project_id, name, found.info.version)
    return DatasetVersionOut(
        **_dataset_out(found.info).model_dump(),
        items=[_item_out(item, links.get(item.id)) for item in found.items],
    )


async def get_dataset(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.EVALS_READ)
    params = parse_query(request, GetDatasetQuery)
    name = request.match_info["name"]
    out = await _db.read(
        request, lambda c: _version_out(c, principal.project_id, name, params.version)
    )
    return json_response(out)


async def get_dataset_version(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.EVALS_READ)
    name, version = request.match_info["name"], _version(request)
    out = await _db.read(request, lambda c: _version_out(c, principal.project_id, name, version))
    return json_response(out)


async def lock_dataset(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.DATASETS_PUSH)
    name, version = request.match_info["name"], _version(request)
    engine = request.app[STATE].engine
    trail = request_trail(request, principal)
    info = await _db.run(
        lambda: store.lock_dataset(engine, principal.project_id, name, version, audit=trail)
    )
    return json_response(_dataset_out(info))


async def dataset_from_traces(request: web.Request) -> web.Response:
    from bastion.evals.from_traces import TraceSelection, resolve_prompt, snapshot
    from bastion.prompts.registry_queries import RegistryError
    from bastion.prompts.usage import parse_since

    principal = await authenticate(request, Permission.DATASETS_PUSH)
    body = await _body(request, FromTracesBody)
    try:
        name = DATASET_NAME.check(request.match_info["name"])
    except InvalidName as exc:
        raise ApiError(400, str(exc)) from exc
    try:
        since, until = parse_since(body.since), parse_since(body.until, name="until")
    except RegistryError as exc:
        raise ApiError(400, str(exc)) from exc
    engine = request.app[STATE].engine
    trail = request_trail(request, principal)

    def work() -> FromTracesOut:
        with engine.connect() as conn:
            prompt_name, prompt_version = (
                resolve_prompt(conn, principal.project_id, body.prompt)
                if body.prompt
                else (None, None)
            )
            selection = TraceSelection(
                since=since, until=until, feature=body.feature, model=body.model, user=body.user,
                error_class=body.error_class, prompt_name=prompt_name,
                prompt_version=prompt_version, limit=body.limit, sample=body.sample,
                expected_from_output=body.expected_from_output,
            )  # fmt: skip
            taken = snapshot(conn, principal.project_id, selection)
        pushed = store.push_dataset(
            engine, principal.project_id, name, taken.items, lock=body.lock, force=body.force,
            sources=taken.sources, audit=trail,
        )  # fmt: skip
        return FromTracesOut(
            status=pushed.status,
            dataset=_dataset_out(pushed.info),
            matched=taken.matched,
            skipped=dict(taken.skipped),
        )

    out = await _db.run(work)
    return json_response(out, 201 if out.status == "created" else 200)


# -- runs ----------------------------------------------------------------------------------------


async def list_runs(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.EVALS_READ)
    q = parse_query(request, RunListQuery)
    infos = await _db.read(
        request,
        lambda c: store.list_runs(
            c,
            principal.project_id,
            dataset_name=q.dataset,
            kind=q.kind,
            status=q.status,
            prompt_name=q.prompt,
            limit=q.limit,
        ),
    )
    return json_response(RunListOut.model_validate({"items": [_run_out(i) for i in infos]}))


def _results(
    conn: sa.Connection, project_id: int, run_id: str, limit: int, offset: int
) -> tuple[list[ResultOut], int]:
    r, s = eval_results.c, eval_scores.c
    total = conn.execute(
        sa.select(sa.func.count()).where(r.project_id == project_id, r.run_id == run_id)
    ).scalar_one()
    rows = conn.execute(
        sa.select(r.item_id, r.repeat, r.output, r.error, r.latency_ms, r.cost_usd, r.trace_id,
                  r.cached)
        .where(r.project_id == project_id, r.run_id == run_id)
        .order_by(r.item_id, r.repeat)
        .limit(limit)
        .offset(offset)
    ).all()  # fmt: skip
    if not rows:
        return [], int(total)
    ids = sorted({row.item_id for row in rows})
    scores: dict[tuple[str, int], list[ScoreOut]] = {}
    for start in range(0, len(ids), 500):
        for row in conn.execute(
            sa.select(s.item_id, s.repeat, s.metric, s.value, s.passed, s.reason, s.details)
            .where(s.project_id == project_id, s.run_id == run_id,
                   s.item_id.in_(ids[start : start + 500]))
            .order_by(s.item_id, s.repeat, s.metric)
        ):  # fmt: skip
            scores.setdefault((row.item_id, int(row.repeat)), []).append(
                ScoreOut(
                    metric=row.metric,
                    value=float(row.value),
                    passed=bool(row.passed),
                    reason=row.reason,
                    details=orjson.loads(row.details),
                )
            )
    results = [
        ResultOut(
            item_id=row.item_id,
            repeat=int(row.repeat),
            output=row.output,
            error=row.error,
            latency_ms=row.latency_ms,
            cost_usd=row.cost_usd,
            trace_id=row.trace_id,
            cached=bool(row.cached),
            scores=scores.get((row.item_id, int(row.repeat)), []),
        )
        for row in rows
    ]
    return results, int(total)


async def get_run(request: web.Request) -> web.Response:
    principal = await authenticate(request, Permission.EVALS_READ)
    q = parse_query(request, RunQuery)
    run_id = request.match_info["run_id"]

    def work(conn: sa.Connection) -> RunDetailOut:
        info = store.get_run(conn, principal.project_id, run_id)
        results, total = _results(conn, principal.project_id, run_id, q.limit, q.offset)
        return RunDetailOut.model_validate(
            {**_run_out(info), "results": results, "result_count": total}
        )

    return json_response(await _db.read(request, work))


async def compare_runs(request: web.Request) -> web.Response:
    from bastion.evals.compare import compare
    from bastion.evals.gate import GateConfigError, GateRules, evaluate_gate
    from bastion.evals.report import render_json

    principal = await authenticate(request, Permission.EVALS_READ)
    q = parse_query(request, CompareQuery)
    try:
        rules = GateRules.from_settings(request.app[STATE].settings)
    except GateConfigError as exc:
        raise ApiError(500, f"bastion.yaml: {exc}", kind="configuration_error") from exc
    engine = request.app[STATE].engine

    def work() -> Any:
        with engine.connect() as conn:
            infos = [
                store.get_run(conn, principal.project_id, r) for r in (q.baseline, q.candidate)
            ]
            for which, info in zip(("baseline", "candidate"), infos, strict=True):
                if info.status != "completed":
                    raise ValueError(f"{which} run {info.run_id} is {info.status}, not completed")
            results = [store.load_results(conn, principal.project_id, i.run_id) for i in infos]
        comparison = compare(results[0], results[1])
        return json.loads(render_json(comparison, evaluate_gate(comparison, rules)))

    try:
        doc = await _db.run(work)
    except ValueError as exc:
        raise ApiError(409, str(exc), kind="not_comparable") from exc
    return json_response(doc)


_NO_DATASET = ((404, "no such dataset or version in this project"),)
_NO_RUN = ((404, "no such run in this project"),)
_READ = needs(Permission.EVALS_READ)
_PUSH = needs(Permission.DATASETS_PUSH)

EVAL_ROUTES: list[ApiRoute] = [
    ApiRoute("GET", _BASE + "/datasets", list_datasets, "List dataset versions", "evals",
             response=DatasetListOut, access=_READ),
    ApiRoute("POST", _BASE + "/datasets", push_dataset,
             "Upload items as a dataset version (201 created, 200 unchanged content)", "evals",
             body=PushDatasetBody, response=PushDatasetOut, access=_PUSH, success=(200, 201),
             errors=((409, "the newest version is locked (use force)"),
                     (413, "the upload is over limits.max_document_bytes"))),
    ApiRoute("GET", _BASE + "/datasets/{name}", get_dataset,
             "A dataset version with its items (the newest by default)", "evals",
             query=GetDatasetQuery, response=DatasetVersionOut, errors=_NO_DATASET,
             access=_READ),
    ApiRoute("GET", _BASE + "/datasets/{name}/versions/{version}", get_dataset_version,
             "One dataset version with its items and their source spans", "evals",
             response=DatasetVersionOut, errors=_NO_DATASET, access=_READ),
    ApiRoute("POST", _BASE + "/datasets/{name}/versions/{version}/lock", lock_dataset,
             "Lock a dataset version (golden: never edited; new content is a new version)",
             "evals", response=DatasetOut, access=_PUSH, errors=_NO_DATASET),
    ApiRoute("POST", _BASE + "/datasets/{name}/from-traces", dataset_from_traces,
             "Snapshot model-call spans matching a filter into a new dataset version", "evals",
             body=FromTracesBody, response=FromTracesOut, access=_PUSH, success=(200, 201),
             errors=((409, "the newest version is locked (use force)"),)),
    ApiRoute("GET", _BASE + "/runs", list_runs, "List eval runs, newest first", "evals",
             query=RunListQuery, response=RunListOut, access=_READ),
    ApiRoute("GET", _BASE + "/runs/" + _RUN_ID, get_run,
             "One run with its results and scores", "evals", query=RunQuery,
             response=RunDetailOut, errors=_NO_RUN, access=_READ),
    ApiRoute("GET", _BASE + "/compare", compare_runs,
             "Paired comparison of two completed runs, with the gate's verdict", "evals",
             query=CompareQuery, response=CompareOut, access=_READ,
             errors=(*_NO_RUN, (409, "a run is not completed, or nothing pairs"))),
]  # fmt: skip
