"""A realistic multi-step trace (retrieval → LLM → tool → LLM) as an OTLP protobuf request.

Used by ``bastion demo`` to show a trace arriving end to end, and handy in tests.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from bastion.tracing.attributes import FEATURE, SESSION, USER

__all__ = ["demo_trace_request"]


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _attrs(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in values.items()]


_MS = 1_000_000
_SPAN_NAMES = ("root", "retrieve", "llm1", "tool", "llm2")


class _DemoSpans:
    """The spans of one trace: its random trace and span ids, and a start two seconds ago."""

    def __init__(self) -> None:
        self.trace_id = os.urandom(16)
        self.t0 = time.time_ns() - 2_000 * _MS
        self.ids = {name: os.urandom(8) for name in _SPAN_NAMES}

    def span(
        self, name: str, parent: str | None, start: int, end: int, kind: int, attrs: dict[str, Any]
    ) -> PbSpan:
        """Span ``name`` from ``start`` to ``end`` ms; ``attrs["_name"]`` is its display name."""
        return PbSpan(
            trace_id=self.trace_id,
            span_id=self.ids[name],
            parent_span_id=self.ids[parent] if parent else b"",
            name=attrs.pop("_name"),
            kind=kind,  # type: ignore[arg-type]
            start_time_unix_nano=self.t0 + start * _MS,
            end_time_unix_nano=self.t0 + end * _MS,
            attributes=_attrs(attrs),
            status=Status(code=Status.STATUS_CODE_OK),
        )


def _chat_attrs(
    messages: list[dict[str, Any]],
    output: list[dict[str, Any]],
    tokens: tuple[int, int],
    common: dict[str, str],
) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1],
        "gen_ai.input.messages": orjson.dumps(messages).decode(),
        "gen_ai.output.messages": orjson.dumps(output).decode(),
        **common,
    }


def _export_request(spans: list[PbSpan]) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(_attrs({"service.name": "support-bot"}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "bastion.demo"
    scope_spans.spans.extend(spans)
    return request.SerializeToString()


def demo_trace_request(
    *, user: str = "user-42", session: str = "session-7", feature: str = "support-answer"
) -> tuple[bytes, str]:
    """Serialized ``ExportTraceServiceRequest`` with one five-span trace, and its trace id (hex)."""
    trace = _DemoSpans()
    span = trace.span
    question = "How do I rotate my API key?"
    tool_call = {"name": "search_docs", "arguments": {"query": "rotate api key"}}
    answer = (
        "Open Settings → API keys, create a new key, switch your app to it, "
        "then revoke the old one."
    )
    common = {USER: user, SESSION: session, FEATURE: feature}

    user_msg = {"role": "user", "parts": [{"type": "text", "content": question}]}
    spans = [
        span("root", None, 0, 1900, PbSpan.SPAN_KIND_SERVER, {"_name": "POST /answer", **common}),
        span(
            "retrieve",
            "root",
            10,
            180,
            PbSpan.SPAN_KIND_INTERNAL,
            {"_name": "retrieve documents", "retrieval.documents": 4, **common},
        ),
        span(
            "llm1",
            "root",
            200,
            900,
            PbSpan.SPAN_KIND_CLIENT,
            {
                "_name": "chat gpt-4o-mini",
                **_chat_attrs(
                    [user_msg],
                    [{"role": "assistant", "parts": [{"type": "tool_call", **tool_call}]}],
                    (412, 38),
                    common,
                ),
            },
        ),
        span(
            "tool",
            "root",
            910,
            1150,
            PbSpan.SPAN_KIND_INTERNAL,
            {
                "_name": "execute_tool search_docs",
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search_docs",
                **common,
            },
        ),
        span(
            "llm2",
            "root",
            1160,
            1880,
            PbSpan.SPAN_KIND_CLIENT,
            {
                "_name": "chat gpt-4o-mini",
                **_chat_attrs(
                    [user_msg],
                    [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}],
                    (655, 61),
                    common,
                ),
            },
        ),
    ]
    return _export_request(spans), trace.trace_id.hex()
