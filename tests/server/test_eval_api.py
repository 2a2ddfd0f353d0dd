"""The evals API over real HTTP, on SQLite and PostgreSQL: datasets (upload, from traces, lock),
runs with their results and scores, paired comparison, roles, and project isolation."""

from __future__ import annotations

import time
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.auth import Role, ensure_project
from bastion.evals import store
from bastion.evals.scorers.base import Score
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode
from tests.conftest import LiveServer
from tests.prompts.test_prompt_api import call
from tests.server.test_api_auth import make_key

ROWS = [
    {"id": "q1", "vars": {"question": "2+2?"}, "expected": "4", "tags": ["math"]},
    {"id": "q2", "question": "capital of France?", "expected": "Paris"},
    {"id": "q3", "question": "color of the sky?", "expected": "blue"},
]


def record_run(
    engine: sa.Engine, project_id: int, values: dict[str, float], *, status: str = "completed"
) -> str:
    """A stored run on dataset ``qa`` v1 scoring each item with ``values[item]``."""
    with engine.connect() as conn:
        dataset = store.get_dataset(conn, project_id, "qa", 1)
    run_id = store.create_run(
        engine, project_id, target_key="assistant@production",
        target={"kind": "prompt", "name": "assistant", "label": "production", "version": 2,
                "model": "m"},
        target_hash="sha256:t", dataset=dataset.info, scorers=[{"type": "equals"}], params={},
        repeats=1,
    )  # fmt: skip
    store.record_results(
        engine,
        project_id,
        run_id,
        [
            store.RecordedResult(
                item_id=item_id,
                repeat=0,
                output=f"out {item_id}",
                cache_key=f"k{item_id}",
                scores=(Score("equals", value, value >= 0.5, "r", {"n": 1}),),
                latency_ms=12.5,
                trace_id="ab" * 16,
            )
            for item_id, value in values.items()
        ],
    )
    store.finish_run(engine, project_id, run_id, status, {"metrics": {}})  # type: ignore[arg-type]
    return run_id


def test_datasets_upload_get_lock_and_errors(live_server: LiveServer) -> None:
    writer = make_key(live_server, "default", Role.WRITE)
    reader = make_key(live_server, "default", Role.READ)
    status, out = call(live_server, "POST", "/api/v1/evals/datasets", {"name": "qa", "items": ROWS},
                       writer)  # fmt: skip
    assert status == 201, out
    assert (out["status"], out["dataset"]["version"], out["dataset"]["item_count"]) == (
        "created", 1, 3,
    )  # fmt: skip
    status, out = call(live_server, "POST", "/api/v1/evals/datasets", {"name": "qa", "items": ROWS},
                       writer)  # fmt: skip
    assert (status, out["status"]) == (200, "unchanged")
    # The same items as JSONL text are the same content.
    jsonl = "\n".join(orjson.dumps(r).decode() for r in ROWS)
    status, out = call(live_server, "POST", "/api/v1/evals/datasets",
                       {"name": "qa", "content": jsonl, "format": "jsonl"}, writer)  # fmt: skip
    assert (status, out["dataset"]["version"]) == (200, 1), out

    status, got = call(live_server, "GET", "/api/v1/evals/datasets/qa", key=reader)
    assert status == 200, got
    assert [i["id"] for i in got["items"]] == ["q1", "q2", "q3"]
    assert got["items"][1]["vars"] == {"question": "capital of France?"}
    assert got["items"][0]["source"] is None
    status, listing = call(live_server, "GET", "/api/v1/evals/datasets", key=reader)
    assert [(d["name"], d["version"]) for d in listing["items"]] == [("qa", 1)]

    for body, message in (
        ({"name": "x", "items": [{"id": "a", "q": 1}, {"id": "a", "q": 2}]},
         "items[1]: duplicate id 'a'"),
        ({"name": "x", "items": [{"vars": [1]}]}, "items[0]: 'vars' must be an object"),
        ({"name": "x", "items": ["text"]}, "items[0]: expected an object"),
        ({"name": "x", "content": '{"a": 1}\n{oops'}, "content.jsonl:2: invalid JSON"),
        ({"name": "x"}, "either as 'items'"),
        ({"name": "x", "items": ROWS, "content": "{}"}, "either as 'items'"),
        ({"name": "", "items": ROWS}, "invalid body: name"),
        ({"name": "x", "items": []}, "no items"),
    ):  # fmt: skip
        status, out = call(live_server, "POST", "/api/v1/evals/datasets", body, writer)
        assert status == 400, (body, out)
        assert message in out["error"]["message"], (body, out)

    status, out = call(live_server, "POST", "/api/v1/evals/datasets", {"name": "qa", "items": ROWS},
                       reader)  # fmt: skip
    assert status == 403, out
    status, out = call(live_server, "POST", "/api/v1/evals/datasets/qa/versions/1/lock", {}, reader)
    assert status == 403, out
    status, out = call(live_server, "POST", "/api/v1/evals/datasets/qa/versions/1/lock", {}, writer)
    assert (status, out["locked"]) == (200, True), out
    changed = [*ROWS[:2], {"id": "q3", "question": "color of grass?", "expected": "green"}]
    status, out = call(live_server, "POST", "/api/v1/evals/datasets", {"name": "qa",
                       "items": changed}, writer)  # fmt: skip
    assert status == 409, out
    assert "locked" in out["error"]["message"]
    status, out = call(live_server, "POST", "/api/v1/evals/datasets",
                       {"name": "qa", "items": changed, "force": True}, writer)  # fmt: skip
    assert (status, out["dataset"]["version"], out["dataset"]["locked"]) == (201, 2, False)
    status, got = call(live_server, "GET", "/api/v1/evals/datasets/qa/versions/1", key=reader)
    assert (status, got["locked"], got["items"][2]["expected"]) == (200, True, "blue")
    status, got = call(live_server, "GET", "/api/v1/evals/datasets/qa?version=2", key=reader)
    assert got["items"][2]["expected"] == "green"
    for path, code in (
        ("/api/v1/evals/datasets/qa/versions/9", 404),
        ("/api/v1/evals/datasets/nope", 404),
        ("/api/v1/evals/datasets/qa/versions/x", 400),
        ("/api/v1/evals/datasets/qa?version=0", 400),
    ):
        status, out = call(live_server, "GET", path, key=reader)
        assert status == code, (path, out)
        assert out["error"]["message"], out


def test_dataset_from_traces_over_http(live_server: LiveServer) -> None:
    engine = live_server.state.engine
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    now = time.time_ns()
    spans = [
        Span(
            trace_id=f"{n:032x}",
            span_id=f"{n:016x}",
            name="chat",
            start_ns=now - n * 1000,
            end_ns=now,
            status_code=StatusCode.OK,
            operation="chat",
            request_model="gpt-4o-mini",
            feature="support" if n < 4 else "search",
            input=orjson.dumps({"messages": [{"role": "user", "content": f"q{n}"}]}).decode(),
            output=orjson.dumps([{"role": "assistant", "content": f"a{n}"}]).decode(),
        )
        for n in range(1, 6)
    ]
    SpanWriter(engine).write([(project_id, s) for s in spans])
    writer = make_key(live_server, "default", Role.WRITE)
    other = make_key(live_server, "other", Role.WRITE)  # created together: one key reload
    body = {"feature": "support", "since": "1h", "expected_from_output": True}
    status, out = call(live_server, "POST", "/api/v1/evals/datasets/prod/from-traces", body, writer)
    assert status == 201, out
    assert (out["dataset"]["item_count"], out["matched"], out["skipped"]) == (3, 3, {})
    status, got = call(live_server, "GET", "/api/v1/evals/datasets/prod/versions/1", key=writer)
    assert status == 200, got
    first = got["items"][0]
    assert first["source"] == {"trace_id": f"{1:032x}", "span_id": f"{1:016x}"}
    assert (first["vars"]["messages"][0]["content"], first["expected"]) == ("q1", "a1")
    status, out = call(live_server, "POST", "/api/v1/evals/datasets/prod/from-traces", body, writer)
    assert (status, out["status"]) == (200, "unchanged")
    # Another project's key snapshots its own spans only: there are none.
    status, out = call(live_server, "POST", "/api/v1/evals/datasets/prod/from-traces", body, other)
    assert status == 400, out
    assert "no model-call spans match" in out["error"]["message"]
    for bad, message in (
        ({"since": "soon"}, "use 30m, 24h, 7d"),
        ({"sample": 0}, "invalid body: sample"),
        ({"feature": "nope"}, "no model-call spans match"),
        ({"prompt": "x@"}, "use NAME"),
        ({"limit": 0}, "invalid body: limit"),
        ({"featur": "x"}, "invalid body: featur"),
    ):
        status, out = call(live_server, "POST", "/api/v1/evals/datasets/p2/from-traces", bad,
                           writer)  # fmt: skip
        assert status == 400, (bad, out)
        assert message in out["error"]["message"], (bad, out)


def test_runs_results_compare_and_isolation(live_server: LiveServer) -> None:
    engine = live_server.state.engine
    writer = make_key(live_server, "default", Role.WRITE)
    other = make_key(live_server, "other", Role.ADMIN)  # created together: one key reload
    status, _ = call(live_server, "POST", "/api/v1/evals/datasets", {"name": "qa", "items": ROWS},
                     writer)  # fmt: skip
    assert status == 201
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    baseline = record_run(engine, project_id, {"q1": 1.0, "q2": 1.0, "q3": 1.0})
    candidate = record_run(engine, project_id, {"q1": 1.0, "q2": 0.0, "q3": 0.0})
    running = record_run(engine, project_id, {"q1": 1.0}, status="running")

    status, out = call(live_server, "GET", "/api/v1/evals/runs?dataset=qa&status=completed",
                       key=writer)  # fmt: skip
    assert status == 200, out
    assert {r["run_id"] for r in out["items"]} == {baseline, candidate}
    assert all(r["prompt_name"] == "assistant" and r["prompt_version"] == 2 for r in out["items"])
    status, out = call(live_server, "GET", "/api/v1/evals/runs?kind=redteam", key=writer)
    assert (status, out["items"]) == (200, [])
    status, run = call(live_server, "GET", f"/api/v1/evals/runs/{candidate}", key=writer)
    assert status == 200, run
    assert (run["kind"], run["status"], run["result_count"]) == ("quality", "completed", 3)
    q2 = next(r for r in run["results"] if r["item_id"] == "q2")
    assert q2["output"] == "out q2"
    assert q2["scores"] == [
        {"metric": "equals", "value": 0.0, "passed": False, "reason": "r", "details": {"n": 1}}
    ]
    status, page = call(live_server, "GET", f"/api/v1/evals/runs/{candidate}?limit=1&offset=2",
                        key=writer)  # fmt: skip
    assert [r["item_id"] for r in page["results"]] == ["q3"]

    path = f"/api/v1/evals/compare?baseline={baseline}&candidate={candidate}"
    status, cmp = call(live_server, "GET", path, key=writer)
    assert status == 200, cmp
    equals = cmp["metrics"][0]
    assert (equals["metric"], equals["n_items"]) == ("equals", 3)
    assert equals["baseline_mean"] == 1.0
    assert abs(equals["candidate_mean"] - 1 / 3) < 1e-9
    assert equals["ci_low"] <= equals["delta"] <= equals["ci_high"]
    assert equals["mcnemar"]["b"] == 2
    assert cmp["verdict"]["passed"] is False
    assert cmp["run_id"] == candidate
    status, out = call(
        live_server, "GET", f"/api/v1/evals/compare?baseline={baseline}&candidate={running}",
        key=writer,
    )  # fmt: skip
    assert status == 409, out
    assert "not completed" in out["error"]["message"]
    for path, code in (
        ("/api/v1/evals/compare?baseline=x&candidate=y", 400),
        ("/api/v1/evals/runs/" + "0" * 32, 404),
        ("/api/v1/evals/runs?kind=other", 400),
    ):
        status, out = call(live_server, "GET", path, key=writer)
        assert status == code, (path, out)

    # Another project's key: everything of project "default" is a 404, never a 403.
    for path in (
        f"/api/v1/evals/runs/{baseline}",
        f"/api/v1/evals/compare?baseline={baseline}&candidate={candidate}",
        "/api/v1/evals/datasets/qa",
        "/api/v1/evals/datasets/qa/versions/1",
    ):
        status, out = call(live_server, "GET", path, key=other)
        assert status == 404, (path, out)
        assert "qa" in out["error"]["message"] or "run" in out["error"]["message"]
    status, out = call(live_server, "POST", "/api/v1/evals/datasets/qa/versions/1/lock", {}, other)
    assert status == 404, out
    for path in ("/api/v1/evals/runs", "/api/v1/evals/datasets"):
        status, out = call(live_server, "GET", path, key=other)
        assert (status, out["items"]) == (200, []), (path, out)
    # Its own dataset of the same name is its own.
    status, out = call(live_server, "POST", "/api/v1/evals/datasets",
                       {"name": "qa", "items": ROWS[:1]}, other)  # fmt: skip
    assert (status, out["dataset"]["version"]) == (201, 1)
    status, _ = call(live_server, "GET", "/api/v1/evals/runs", key=None)
    assert status == 200  # the admin key of "default"
    status, out = call(live_server, "GET", "/api/v1/evals/datasets/qa", key=writer)
    assert out["item_count"] == 3


def test_openapi_lists_the_eval_routes(live_server: LiveServer) -> None:
    status, doc = call(live_server, "GET", "/api/v1/openapi.json")
    assert status == 200
    paths: dict[str, Any] = doc["paths"]
    for path in (
        "/api/v1/evals/datasets",
        "/api/v1/evals/datasets/{name}/versions/{version}/lock",
        "/api/v1/evals/datasets/{name}/from-traces",
        "/api/v1/evals/runs/{run_id}",
        "/api/v1/evals/compare",
    ):
        assert path in paths, path
    assert "post" in paths["/api/v1/evals/datasets"]
    assert "CompareOut" in doc["components"]["schemas"]
