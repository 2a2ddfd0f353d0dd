"""An application instrumented with the OpenTelemetry openai-v2 instrumentation calls through
the gateway with a traceparent: its client span and the gateway's span describe one call, which
every summary counts once, whichever span is stored first (SQLite and PostgreSQL).

Two servers share the database: the gateway, whose call spans wait for company up to its
linger (5 s), and a receiver for the application's own spans. A span posted to the gateway's
receiver ends the linger, so the test decides which span is stored first.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.providers.simulator import SimulatorConfig, SimulatorServer
from bastion.settings import Settings, load_settings
from tests.conftest import LiveServer, start_live_server

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
models:
  chat: {{deployments: [{{provider: sim, model: sim-small}}]}}
prices:
  sim-small: {{input_usd_per_mtok: 150, output_usd_per_mtok: 600}}
ingest: {{batch_linger_ms: {linger}}}
"""


@pytest.fixture
def servers(settings: Settings, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """(gateway, receiver) on one database."""
    with SimulatorServer(SimulatorConfig(seed=11)) as sim:
        started = []
        try:
            for name, linger in (("gateway", 5000), ("receiver", 0)):
                config = tmp_path / f"{name}.yaml"
                config.write_text(CONFIG.format(sim=sim.url, linger=linger))
                loaded = load_settings(
                    config, home=tmp_path / name, database_url=settings.database_url
                )
                started.append(start_live_server(loaded))
            yield started[0][0], started[1][0]
        finally:
            for _, stop in started:
                stop()


def _get(server: LiveServer, path: str) -> Any:
    request = urllib.request.Request(server.url + path, headers=server.headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def _export(server: LiveServer, spans: list[ReadableSpan]) -> None:
    exporter = OTLPSpanExporter(endpoint=server.url + "/v1/traces", headers=server.headers())
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS  # acknowledged: stored
    finally:
        exporter.shutdown()


def _end_linger(gateway: LiveServer, request_id: str) -> None:
    """Post an unrelated span to the gateway's receiver: an awaited batch ends the linger, so
    the gateway's call span is written with it; then wait for it to be stored."""
    now = time.time_ns()
    span = {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": "nudge",
            "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1)}  # fmt: skip
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    headers = {**gateway.headers(), "Content-Type": "application/json"}
    request = urllib.request.Request(gateway.url + "/v1/traces", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    deadline = time.monotonic() + 30
    while not _get(gateway, f"/api/v1/spans?request_id={request_id}")["items"]:
        assert time.monotonic() < deadline, "the gateway span was never stored"
        time.sleep(0.05)


def _instrumented_call(gateway: LiveServer, inject_in: str) -> tuple[list[ReadableSpan], str]:
    """One chat call by an instrumented app; its spans (held in memory) and the request id.

    ``inject_in``: ``client`` sends the client span's own context (as HTTP client
    instrumentation does), ``app`` the enclosing application span's (the gateway span is then
    the client span's sibling)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)

    def inject(request: httpx2.Request) -> None:
        if inject_in == "client":  # runs inside the instrumentation's client span
            propagate.inject(request.headers)

    try:
        http = httpx2.Client(event_hooks={"request": [inject]})
        sdk = openai.OpenAI(
            base_url=gateway.url + "/v1", api_key=gateway.admin_key, max_retries=0, http_client=http
        )
        with provider.get_tracer("app").start_as_current_span("answer question"):
            headers: dict[str, str] = {}
            if inject_in == "app":
                propagate.inject(headers)
            raw = sdk.chat.completions.with_raw_response.create(
                model="chat",
                messages=[{"role": "user", "content": "Reply with: counted once"}],
                extra_headers=headers,
            )
        http.close()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    return list(memory.get_finished_spans()), raw.headers["x-request-id"]


@pytest.mark.parametrize(
    ("inject_in", "order"),
    [
        ("client", "client-first"),
        ("client", "gateway-first"),
        ("client", "same-batch"),
        ("app", "client-first"),
        ("app", "gateway-first"),
    ],
)
def test_an_instrumented_call_through_the_gateway_is_counted_once(
    servers: tuple[LiveServer, LiveServer], inject_in: str, order: str
) -> None:
    gateway, receiver = servers
    started = time.time_ns()
    app_spans, request_id = _instrumented_call(gateway, inject_in)
    if order == "client-first":
        _export(receiver, app_spans)
        _end_linger(gateway, request_id)
    elif order == "gateway-first":
        _end_linger(gateway, request_id)
        _export(receiver, app_spans)
    else:  # the application's spans end the linger: one transaction holds them all
        _export(gateway, app_spans)
        _end_linger(gateway, request_id)

    (gateway_span,) = _get(gateway, f"/api/v1/spans?request_id={request_id}")["items"]
    trace_id = gateway_span["trace_id"]
    spans = _get(gateway, f"/api/v1/spans?trace_id={trace_id}&llm_only=true")["items"]
    (client,) = [s for s in spans if s["request_id"] is None]
    assert client["duplicate_of"] == gateway_span["span_id"]
    assert client["cost_usd"]  # both priced: either could be counted
    assert gateway_span["cost_usd"]
    first = min((client, gateway_span), key=lambda s: s["ingested_ns"])
    expected_first = {"client-first": client, "gateway-first": gateway_span}.get(order)
    if expected_first is not None:  # (one batch: each part keeps its own marker)
        assert first is expected_first

    trace = _get(gateway, f"/api/v1/traces?request_id={request_id}")["items"]
    assert [t["trace_id"] for t in trace] == [trace_id]
    (summary,) = trace
    assert summary["llm_count"] == 1
    assert summary["input_tokens"] == gateway_span["input_tokens"]
    assert summary["cost_usd"] == pytest.approx(gateway_span["cost_usd"])
    metrics = _get(gateway, f"/api/v1/metrics/summary?start={_iso(started - 10**9)}")["total"]
    assert metrics["count"] == 1
    assert metrics["cost_usd"] == pytest.approx(gateway_span["cost_usd"])


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + "Z"
