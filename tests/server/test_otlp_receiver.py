"""The OTLP receiver over real HTTP on loopback, fed by the real OpenTelemetry SDK exporter."""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import LiveServer


def http(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def get_json(server: LiveServer, path: str, key: str | None = None) -> Any:
    status, _, body = http("GET", server.url + path, headers=server.headers(key))
    assert status == 200, body
    return orjson.loads(body)


def run_agent(provider: TracerProvider) -> str:
    """A multi-step app: retrieval → LLM call → tool call → LLM call, under one root span."""
    tracer = provider.get_tracer("test-agent")
    with tracer.start_as_current_span(
        "answer question", attributes={"bastion.user": "u-1"}
    ) as root:
        with tracer.start_as_current_span("retrieve", attributes={"retrieval.k": 4}):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=otel_trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.output_tokens": 100,
                "bastion.feature": "support",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool search",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=otel_trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai",  # the older attribute names
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.prompt_tokens": 2000,
                "gen_ai.usage.completion_tokens": 300,
            },
        ):
            pass
        return format(root.get_span_context().trace_id, "032x")


def exporter_provider(
    server: LiveServer, *, gzip_on: bool, path: str = "/v1/traces"
) -> TracerProvider:
    exporter = OTLPSpanExporter(
        endpoint=server.url + path,
        headers=server.headers(),
        compression=Compression.Gzip if gzip_on else Compression.NoCompression,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.mark.parametrize("gzip_on", [False, True])
def test_sdk_exporter_trace_comes_back_as_one_priced_tree(
    live_server: LiveServer, gzip_on: bool
) -> None:
    provider = exporter_provider(live_server, gzip_on=gzip_on)
    trace_id = run_agent(provider)
    provider.shutdown()

    tree = get_json(live_server, f"/api/v1/traces/{trace_id}")
    assert [r["name"] for r in tree["roots"]] == ["answer question"]
    children = tree["roots"][0]["children"]
    assert [c["name"] for c in children] == [
        "retrieve",
        "chat gpt-4o-mini",
        "execute_tool search",
        "chat gpt-4o-mini",
    ]
    llm = [c for c in children if c["is_llm"] and c["operation"] == "chat"]
    assert [(c["input_tokens"], c["output_tokens"]) for c in llm] == [(1000, 100), (2000, 300)]
    assert all(c["provider"] == "openai" for c in llm)
    # gpt-4o-mini list price: $0.15 / $0.60 per million tokens (shipped catalog).
    assert llm[0]["cost_usd"] == pytest.approx(1000 * 0.15e-6 + 100 * 0.60e-6)
    summary = tree["trace"]
    assert summary["span_count"] == 5
    assert summary["input_tokens"] == 3000
    assert summary["output_tokens"] == 400
    assert summary["cost_usd"] == pytest.approx(3000 * 0.15e-6 + 400 * 0.60e-6)
    assert summary["user_id"] == "u-1"
    assert summary["service_name"] == "agent"


def test_json_encoding_with_hex_ids_and_string_int64(live_server: LiveServer) -> None:
    trace_id = "5b8efff798038103d269b633813fc60c"
    now = time.time_ns()
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "js-app"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": "eee19b7ec3c1b174",
                                "name": "llm",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": str(now),
                                "endTimeUnixNano": str(now + 250_000_000),
                                "attributes": [
                                    {
                                        "key": "gen_ai.request.model",
                                        "value": {"stringValue": "gpt-4o-mini"},
                                    },
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "chat"},
                                    },
                                    {
                                        "key": "gen_ai.usage.input_tokens",
                                        "value": {"intValue": "120"},
                                    },
                                ],
                                "status": {"code": 2, "message": "boom"},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, headers, raw = http(
        "POST",
        live_server.url + "/v1/traces",
        body=gzip.compress(orjson.dumps(body)),
        headers={
            **live_server.headers(),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert status == 200, raw
    assert headers["Content-Type"].startswith("application/json")
    span = get_json(live_server, f"/api/v1/traces/{trace_id}")["roots"][0]
    assert span["input_tokens"] == 120
    assert span["latency_ms"] == pytest.approx(250)
    assert span["status"] == "error"
    assert span["service_name"] == "js-app"


def test_partial_success_for_invalid_spans(live_server: LiveServer) -> None:
    now = time.time_ns()
    good = {
        "traceId": "ab" * 16,
        "spanId": "cd" * 8,
        "name": "ok",
        "startTimeUnixNano": now,
        "endTimeUnixNano": now,
    }
    bad = {**good, "traceId": "00" * 16, "spanId": "ef" * 8}
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}
    status, _, raw = http(
        "POST",
        live_server.url + "/v1/traces",
        body=orjson.dumps(body),
        headers={**live_server.headers(), "Content-Type": "application/json"},
    )
    assert status == 200
    partial = orjson.loads(raw)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert partial["errorMessage"]
    assert get_json(live_server, f"/api/v1/traces/{'ab' * 16}")["trace"]["span_count"] == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "json"),
        (b"\x0a\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400, ""),
        (b"hello", {"Content-Type": "text/plain"}, 415, "text/plain"),
        (
            b"not gzip",
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            400,
            "gzip",
        ),
    ],
)
def test_malformed_bodies_get_a_4xx_naming_the_problem(
    live_server: LiveServer, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    got, _, raw = http(
        "POST",
        live_server.url + "/v1/traces",
        body=body,
        headers={**live_server.headers(), **headers},
    )
    assert got == status
    if headers["Content-Type"] == "application/json":
        assert fragment in orjson.loads(raw)["message"].lower()


def test_oversized_and_gzip_bomb_bodies_get_413(live_server: LiveServer) -> None:
    limit = live_server.settings.ingest.max_request_bytes
    headers = {**live_server.headers(), "Content-Type": "application/json"}
    status, _, _ = http(
        "POST", live_server.url + "/v1/traces", body=b" " * (limit + 10), headers=headers
    )
    assert status == 413
    bomb = gzip.compress(b" " * (limit * 2))
    status, _, _ = http(
        "POST",
        live_server.url + "/v1/traces",
        body=bomb,
        headers={**headers, "Content-Encoding": "gzip"},
    )
    assert status == 413


def test_ingest_requires_a_valid_key(live_server: LiveServer) -> None:
    for headers in ({}, {"Authorization": "Bearer bst_not-a-real-key"}):
        status, _, _ = http(
            "POST",
            live_server.url + "/v1/traces",
            body=b"{}",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert status == 401


def test_langfuse_exporter_path_with_basic_auth(live_server: LiveServer) -> None:
    import base64

    provider = TracerProvider()
    basic = base64.b64encode(f"pk-lf-public:{live_server.admin_key}".encode()).decode()
    exporter = OTLPSpanExporter(
        endpoint=live_server.url + "/api/public/otel/v1/traces",
        headers={"Authorization": f"Basic {basic}"},
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("langfuse")
    with tracer.start_as_current_span(
        "generation",
        attributes={
            "langfuse.observation.type": "generation",
            "langfuse.observation.model.name": "gpt-4o-mini",
            "langfuse.observation.usage_details": '{"input": 10, "output": 5}',
            "langfuse.user.id": "lf-user",
        },
    ) as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    node = get_json(live_server, f"/api/v1/traces/{trace_id}")["roots"][0]
    assert node["input_tokens"] == 10
    assert node["user_id"] == "lf-user"
    assert node["is_llm"]


def test_backpressure_answers_429_with_retry_after(live_server: LiveServer) -> None:
    from bastion.ingest.pipeline import Backpressure

    pipeline = live_server.state.pipeline
    original = pipeline.submit_nowait

    def full(*_args: object, **_kwargs: object) -> None:
        raise Backpressure("ingest queue full", retry_after_s=2)

    pipeline.submit_nowait = full
    try:
        now = time.time_ns()
        span = {
            "traceId": "ab" * 16,
            "spanId": "cd" * 8,
            "name": "x",
            "startTimeUnixNano": now,
            "endTimeUnixNano": now,
        }
        status, headers, raw = http(
            "POST",
            live_server.url + "/v1/traces",
            body=orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}),
            headers={**live_server.headers(), "Content-Type": "application/json"},
        )
    finally:
        pipeline.submit_nowait = original
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert "queue full" in orjson.loads(raw)["message"]


def test_protobuf_response_is_an_export_response(live_server: LiveServer) -> None:
    from bastion.tracing.demo_trace import demo_trace_request

    body, trace_id = demo_trace_request()
    status, _, raw = http(
        "POST",
        live_server.url + "/v1/traces",
        body=body,
        headers={**live_server.headers(), "Content-Type": "application/x-protobuf"},
    )
    assert status == 200
    response = ExportTraceServiceResponse()
    response.ParseFromString(raw)
    assert response.partial_success.rejected_spans == 0
    assert get_json(live_server, f"/api/v1/traces/{trace_id}")["trace"]["span_count"] == 5
