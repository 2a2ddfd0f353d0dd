"""An app instrumented with OpenTelemetry: its client span and the gateway span share a trace."""

from __future__ import annotations

import openai
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.gateway.conftest import Gateway


def test_client_span_and_gateway_span_join_via_traceparent(gateway: Gateway) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(
                endpoint=gateway.url + "/v1/traces",
                headers={"Authorization": f"Bearer {gateway.key}"},
            )
        )
    )
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
        with provider.get_tracer("app").start_as_current_span("answer question") as app_span:
            headers: dict[str, str] = {}
            propagate.inject(headers)  # W3C traceparent of the current (app) span
            sdk.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "Reply with: joined"}],
                extra_headers=headers,
            )
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    finished = memory.get_finished_spans()
    client_spans = [s for s in finished if s.name.startswith("chat")]
    assert client_spans, [s.name for s in finished]
    client_span = client_spans[0]
    assert client_span.attributes is not None
    assert client_span.attributes.get("gen_ai.request.model") == "chat"
    trace_id = format(app_span.get_span_context().trace_id, "032x")
    assert format(client_span.context.trace_id, "032x") == trace_id

    # The gateway span sits in the app's trace, under the span whose context was sent.
    gateway_span = gateway.span(trace_id)
    exported = {format(s.context.span_id, "016x") for s in finished}
    assert gateway_span["parent_span_id"] in exported
    tree_ids = {s["span_id"] for s in gateway.tree(trace_id)}
    assert format(client_span.context.span_id, "016x") in tree_ids  # exported over OTLP too
    assert gateway_span["span_id"] in tree_ids
