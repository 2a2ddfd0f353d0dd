"""Schemathesis over the server's own OpenAPI document, against a real server on loopback, on
SQLite and PostgreSQL: whatever a client sends, no route answers 5xx, every status it answers
is one the document declares, and every body matches the declared schema.

The server is seeded first (spans, a prompt with a label, a dataset, eval runs, releases and a
route) so listing and detail routes answer with real items, not only empty pages and 404s.
Examples per operation are bounded so both backends together stay near a minute on two cores.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bastion.auth import ensure_project
from tests.conftest import LiveServer
from tests.server.test_eval_api import record_run
from tests.server.test_otlp_receiver import http

# Generated requests per operation: enough to reach every parameter's edge cases (bounds,
# empty and odd strings, huge numbers) without making the suite slow.
# BASTION_FUZZ_EXAMPLES=500 runs a deeper fuzz by hand.
EXAMPLES_PER_OPERATION = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "30"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Run last: revoking keys may revoke the key the fuzz itself uses.
LAST = ("DELETE /api/v1/keys/{key_id}",)


def _call(server: LiveServer, method: str, path: str, body: Any = None) -> Any:
    raw = None if body is None else orjson.dumps(body)
    status, _, out = http(
        method,
        server.url + path,
        body=raw,
        headers={**server.headers(), "Content-Type": "application/json"},
    )
    assert status < 300, (path, out)
    return orjson.loads(out) if out else None


def _seed(server: LiveServer) -> dict[str, str]:
    """Data for the routes to find; returns the path parameters that name it."""
    now = time.time_ns()
    spans = [
        {
            "traceId": f"{i:032x}",
            "spanId": f"{i + 1:016x}",
            "name": "chat sim-small",
            "startTimeUnixNano": now - i * 1_000_000,
            "endTimeUnixNano": now - i * 1_000_000 + 500_000,
            "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "gen_ai.request.model", "value": {"stringValue": "sim-small"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 10}},
                {"key": "bastion.prompt.name", "value": {"stringValue": "qa"}},
            ],
        }
        for i in range(1, 6)
    ]
    status, _, body = http(
        "POST",
        server.url + "/v1/traces",
        body=orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}),
        headers={**server.headers(), "Content-Type": "application/json"},
    )
    assert status == 200, body
    # The prompt and the dataset share a name, so one ``name`` finds either.
    prompt = {"name": "qa", "text": "Hello {{ name }}", "variables": {"name": "string"}}
    _call(server, "POST", "/api/v1/prompts", {"prompts": [prompt]})
    _call(server, "PUT", "/api/v1/prompts/qa/labels/production", {"version": 1})
    rows = [{"id": f"q{i}", "vars": {"name": "Ada"}, "expected": "Hello Ada"} for i in (1, 2)]
    _call(server, "POST", "/api/v1/evals/datasets", {"name": "qa", "items": rows})
    engine = server.state.engine
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    runs = [record_run(engine, project_id, {"q1": 1.0, "q2": v}) for v in (1.0, 0.0)]
    for model in ("sim-small", "sim-large"):
        _call(server, "POST", "/api/v1/releases", {"spec": {"name": f"r-{model}", "model": model}})
    _call(server, "POST", "/api/v1/routes/checkout/deploy", {"release": "r-sim-small"})
    _call(server, "POST", "/api/v1/routes/checkout/rollout", {"candidate": "r-sim-large"})
    return {
        "trace_id": f"{1:032x}",
        "name": "qa",
        "label": "production",
        "version": "1",
        "run_id": runs[1],
        "release": "r-sim-small",
        "route": "checkout",
        "baseline": runs[0],
        "candidate": runs[1],
    }


def _fuzz_operation(operation: Any, server: LiveServer, seeded: dict[str, str]) -> None:
    # Valid requests and invalid ones (wrong types, out-of-bound values, missing fields), and
    # valid ones naming the seeded data, whose answers are the detailed, successful ones.
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )
    path = {p.name: seeded[p.name] for p in operation.path_parameters if p.name in seeded}
    query = {p.name: seeded[p.name] for p in operation.query if p.name in ("baseline", "candidate")}
    if path or query:
        strategy |= operation.as_strategy(path_parameters=path or None, query=query or None)

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        # No shrinking: a failure is reported with the request that caused it, in bounded time.
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=server.url, headers=server.headers(), checks=CHECKS)

    run()


def test_no_route_answers_5xx_or_breaks_its_schema(live_server: LiveServer) -> None:
    seeded = _seed(live_server)
    status, _, raw = http("GET", live_server.url + "/api/v1/openapi.json")
    assert status == 200
    schema = schemathesis.openapi.from_dict(orjson.loads(raw))
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.label in LAST)
    assert len(operations) >= 40
    failures: list[str] = []
    for operation in operations:
        try:
            _fuzz_operation(operation, live_server, seeded)
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_document_declares_every_api_route_and_response(live_server: LiveServer) -> None:
    status, _, raw = http("GET", live_server.url + "/api/v1/openapi.json")
    assert status == 200
    paths = orjson.loads(raw)["paths"]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in live_server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.resource.canonical != "/api/v1/openapi.json"
        and route.method != "HEAD"
    }
    declared = {(method, path) for path, ops in paths.items() for method in ops}
    assert served == declared
    for path, ops in paths.items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                assert "application/json" in response.get("content", {}), (method, path, code)
