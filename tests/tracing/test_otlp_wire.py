"""The C wire reader of OTLP protobuf requests agrees with the protobuf runtime, or steps aside.

Every request is decoded twice, once through the wire reader and once through the runtime, and
the two results must be identical; where the reader returns None the runtime decides alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode

from bastion.tracing import otlp
from bastion.tracing._otlp_wire import read_request
from bastion.tracing.otlp import OtlpError, decode_request


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def every_shape() -> bytes:
    """A request with every field the reader knows, every value type, and edge values."""
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[
                kv("list", AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=-1)]))),
                kv("deep", AnyValue(kvlist_value=KeyValueList(values=[kv("x", AnyValue())]))),
            ]
        )
    )
    attributes = [
        kv("text", AnyValue(string_value="héllo ✓ 🙂")),
        kv("empty", AnyValue(string_value="")),
        kv("int", AnyValue(int_value=2**63 - 1)),
        kv("negative", AnyValue(int_value=-(2**63))),
        kv("zero", AnyValue(int_value=0)),
        kv("double", AnyValue(double_value=-1.5e300)),
        kv("true", AnyValue(bool_value=True)),
        kv("false", AnyValue(bool_value=False)),
        *(kv(f"bytes{n}", AnyValue(bytes_value=bytes(range(250, 250 + n)))) for n in range(5)),
        kv("unset", AnyValue()),
        KeyValue(key="no value"),
        KeyValue(value=AnyValue(string_value="no key")),
        kv("array", AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"), nested]))),
        kv("map", nested),
        kv("text", AnyValue(int_value=7)),  # a repeated key: the later value, first place
    ]
    span = PbSpan(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        trace_state="vendor=1",
        parent_span_id=bytes(range(2, 10)),
        flags=0x301,
        name="chat",
        kind=PbSpan.SPAN_KIND_CLIENT,
        start_time_unix_nano=2**62,
        end_time_unix_nano=1,
        attributes=attributes,
        dropped_attributes_count=3,
        events=[
            PbSpan.Event(time_unix_nano=5, name="exception", attributes=attributes[:3]),
            PbSpan.Event(),
        ],
        dropped_events_count=1,
        links=[
            PbSpan.Link(
                trace_id=bytes(16),
                span_id=b"\x01" * 8,
                trace_state="a=b",
                attributes=attributes[:2],
                dropped_attributes_count=1,
                flags=1,
            )
        ],
        dropped_links_count=2,
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
    )
    spans = [
        span,
        PbSpan(trace_id=bytes(range(1, 17)), span_id=b"\x02" * 8, start_time_unix_nano=10),
        PbSpan(trace_id=b"\x01" * 3, span_id=b"\x03" * 8, start_time_unix_nano=10),
        PbSpan(trace_id=b"\x01" * 16, span_id=b"\x04" * 8, parent_span_id=b"\x05"),
        PbSpan(trace_id=b"\x01" * 16, span_id=b"\x06" * 8, kind=-3, start_time_unix_nano=1),
        PbSpan(),
    ]
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", AnyValue(string_value="s"))]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(
                            name="lib", version="1.0", attributes=attributes[:2]
                        ),
                        spans=spans,
                        schema_url="https://opentelemetry.io/schemas/1.30.0",
                    ),
                    ScopeSpans(spans=spans[:2]),
                ],
                schema_url="https://opentelemetry.io/schemas/1.30.0",
            ),
            ResourceSpans(scope_spans=[ScopeSpans(scope=InstrumentationScope(), spans=spans)]),
            ResourceSpans(),
        ]
    )
    return bytes(request.SerializeToString())


def sdk_export() -> bytes:
    """What the OpenTelemetry SDK's OTLP/HTTP exporter sends, built by its own encoder."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "app"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("app.module", "2.0", schema_url="https://example.com/s")
    with tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "chat"}):
        with tracer.start_as_current_span("retrieve") as child:
            child.set_attribute("hits", [1, 2, 3])
            child.set_attribute("scores", (0.5, 0.25))
            child.add_event("cache miss", {"key": "q1", "hit": False})
        linked = child.get_span_context()
        with tracer.start_as_current_span("llm", links=[Link(linked, {"why": "retry"})]) as llm:
            llm.set_attribute("gen_ai.usage.input_tokens", 12)
            llm.set_status(StatusCode.ERROR, "rate limited")
            llm.record_exception(RuntimeError("429"))
    provider.shutdown()
    return bytes(encode_spans(memory.get_finished_spans()).SerializeToString())


def decoded(body: bytes, *, wire: bool) -> str:
    """The decode result as text (NaN equals itself there), or the error and its status."""
    saved = otlp._read_wire
    otlp._read_wire = read_request if wire else None
    try:
        result = decode_request(
            body,
            content_type="application/x-protobuf",
            content_encoding=None,
            max_bytes=2**24,
            max_message_chars=10_000,
        )
    except OtlpError as exc:
        return f"error {exc.status}: {exc}"
    finally:
        otlp._read_wire = saved
    return repr(result)


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    return [every_shape(), sdk_export()]


def test_the_wire_reader_is_built() -> None:
    # An install without a C compiler still works (the runtime reads everything), but the
    # project's own installs compile it: a build that quietly failed would show only as speed
    # (and this module would not import).
    assert otlp._read_wire is read_request


def test_the_wire_reader_handles_what_exporters_send_and_agrees(bodies: list[bytes]) -> None:
    for body in bodies:
        assert read_request(body) is not None
        assert decoded(body, wire=True) == decoded(body, wire=False)
    result = decoded(bodies[0], wire=True)
    assert "'bytes3': '+vv8'" in result  # base64, as the runtime path gives it
    assert "rejected=8" in result  # four spans with bad ids, a kind or no start, twice


def test_the_wire_reader_steps_aside_for_what_it_does_not_handle() -> None:
    span = PbSpan(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="a", start_time_unix_nano=1)
    plain = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()
    assert read_request(plain) is not None
    span_bytes = span.SerializeToString() + b"\x2a\x01b"  # name (field 5) once more: "b"
    scope = b"\x12" + bytes([len(span_bytes)]) + span_bytes
    resource = b"\x12" + bytes([len(scope)]) + scope
    name_again = b"\x0a" + bytes([len(resource)]) + resource
    deep = AnyValue(string_value="bottom")
    for _ in range(40):
        deep = AnyValue(array_value=ArrayValue(values=[deep]))
    nested = PbSpan(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, start_time_unix_nano=1)
    nested.attributes.append(kv("deep", deep))
    deep_body = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[nested])])]
    ).SerializeToString()
    cases = {
        "a singular field twice (the runtime keeps the last)": name_again,
        "an unknown field": plain + b"\xa0\x06\x01",  # field 100, varint
        "a known field with another wire type": b"\x08\x01",  # resource_spans as a varint
        "a group": b"\x0b\x0c",
        "truncated": plain[:-1],
        "invalid UTF-8 in a string": plain.replace(b"\x2a\x01a", b"\x2a\x01\xff"),
        "nesting past 32 levels": deep_body,
    }
    for what, body in cases.items():
        assert read_request(body) is None, what
        assert decoded(body, wire=True) == decoded(body, wire=False), what
    assert "name='b'" in decoded(name_again, wire=True)
    assert decoded(cases["invalid UTF-8 in a string"], wire=True).startswith("error 400")


def mangled(body: bytes, rng: random.Random) -> Iterator[bytes]:
    """Bodies a byte or a few away from ``body``: flipped, cut, inserted, repeated."""
    for _ in range(600):
        data = bytearray(body)
        at = rng.randrange(len(data))
        choice = rng.randrange(5)
        if choice == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data[at] = rng.randrange(256)
        elif choice == 2:
            del data[at:]
        elif choice == 3:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        else:
            size = rng.randrange(1, 40)
            data[at:at] = data[at : at + size]
        yield bytes(data)


def test_the_wire_reader_agrees_with_the_runtime_on_mangled_bodies(bodies: list[bytes]) -> None:
    rng = random.Random(20261130)
    handled = 0
    outcomes: set[str] = set()
    for body in bodies:
        for candidate in mangled(body, rng):
            wire = decoded(candidate, wire=True)
            assert wire == decoded(candidate, wire=False), candidate.hex()
            handled += read_request(candidate) is not None
            outcomes.add(wire.split(":")[0] if wire.startswith("error") else "decoded")
    # Both outcomes occurred, and the reader read a good share itself rather than stepping
    # aside for everything.
    assert {"decoded", "error 400"} <= outcomes
    assert handled > 200
