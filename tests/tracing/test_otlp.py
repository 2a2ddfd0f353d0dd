"""Decoding OTLP trace requests: protobuf, JSON, compression, caps and partial success."""

from __future__ import annotations

import base64
import gzip
import re
import zlib
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from bastion.tracing import otlp
from bastion.tracing.otlp import DecodeResult, OtlpError, decode_request, encode_response

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
PARENT = "eee19b7ec3c1b173"
MB = 1024 * 1024


@pytest.fixture(params=["wire", "runtime"])
def protobuf_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Protobuf bodies read by the C wire reader, then the same assertions with the protobuf
    runtime reading every body (as on an install that compiled no C)."""
    if request.param == "runtime":
        monkeypatch.setattr(otlp, "_read_wire", None)
    elif otlp._read_wire is None:
        pytest.skip("the C wire reader is not built")
    return str(request.param)


def decode(body: bytes, content_type: str = "application/x-protobuf", **kw: Any) -> DecodeResult:
    options: dict[str, Any] = {"content_encoding": None, "max_bytes": MB, "max_message_chars": 1000}
    options.update(kw)
    return decode_request(body, content_type=content_type, **options)


def pb_request(*spans: PbSpan, service: str = "svc") -> bytes:
    resource_attrs = [KeyValue(key="service.name", value=AnyValue(string_value=service))]
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": resource_attrs},
                scope_spans=[ScopeSpans(scope={"name": "lib"}, spans=list(spans))],
            )
        ]
    )
    return bytes(request.SerializeToString())


def pb_span(span_id: str = SPAN, trace_id: str = TRACE, **kw: Any) -> PbSpan:
    values: dict[str, Any] = {
        "trace_id": bytes.fromhex(trace_id),
        "span_id": bytes.fromhex(span_id),
        "name": "chat",
        "start_time_unix_nano": 1_700_000_000_000_000_000,
        "end_time_unix_nano": 1_700_000_000_250_000_000,
    }
    values.update(kw)
    return PbSpan(**values)


def json_request(*spans: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]
                    },
                    "scopeSpans": [{"scope": {"name": "lib"}, "spans": list(spans)}],
                }
            ]
        }
    )


def json_span(**kw: Any) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": TRACE,
        "spanId": SPAN,
        "name": "chat",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000250000000",
    }
    span.update(kw)
    return span


@pytest.mark.usefixtures("protobuf_reader")
def test_protobuf_span_keeps_ids_times_status_attributes_and_events() -> None:
    attrs = [
        KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o")),
        KeyValue(key="n", value=AnyValue(int_value=3)),
        KeyValue(key="ratio", value=AnyValue(double_value=0.5)),
        KeyValue(key="flag", value=AnyValue(bool_value=True)),
        KeyValue(key="blob", value=AnyValue(bytes_value=b"\x00\x01")),
        KeyValue(
            key="list",
            value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)])),
        ),
        KeyValue(
            key="map",
            value=AnyValue(
                kvlist_value=KeyValueList(
                    values=[KeyValue(key="a", value=AnyValue(string_value="b"))]
                )
            ),
        ),
    ]
    span = pb_span(
        parent_span_id=bytes.fromhex(PARENT),
        kind=PbSpan.SPAN_KIND_CLIENT,
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        attributes=attrs,
        events=[PbSpan.Event(name="exception", time_unix_nano=5, attributes=[])],
    )
    result = decode(pb_request(span))
    assert result.rejected == 0
    (got,) = result.spans
    assert (got.trace_id, got.span_id, got.parent_span_id) == (TRACE, SPAN, PARENT)
    assert (got.kind, got.status_code, got.status_message) == (3, 2, "boom")
    assert (got.start_ns, got.end_ns) == (1_700_000_000_000_000_000, 1_700_000_000_250_000_000)
    assert got.latency_ms == 250.0
    assert (got.name, got.service_name, got.resource) == ("chat", "svc", {"service.name": "svc"})
    assert got.attributes["n"] == 3
    assert got.attributes["ratio"] == 0.5
    assert got.attributes["flag"] is True
    assert got.attributes["blob"] == base64.b64encode(b"\x00\x01").decode()
    assert got.attributes["list"] == [1]
    assert got.attributes["map"] == {"a": "b"}
    assert got.attributes["otel.scope.name"] == "lib"
    assert got.events == [{"name": "exception", "time_ns": 5, "attributes": {}}]
    assert got.request_model == "gpt-4o"  # normalised on the way in
    assert got.error_class == "error"


def test_json_hex_ids_string_int64_enum_names_and_snake_case() -> None:
    camel = json_span(
        parentSpanId=PARENT,
        kind="SPAN_KIND_CLIENT",
        status={"code": "STATUS_CODE_OK"},
        attributes=[
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
            {"key": "d", "value": {"doubleValue": 1.5}},
            {"key": "arr", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
        ],
        events=[{"name": "e", "timeUnixNano": "1700000000100000000"}],
    )
    (got,) = decode(json_request(camel), "application/json").spans
    assert (got.trace_id, got.parent_span_id, got.kind, got.status_code) == (TRACE, PARENT, 3, 1)
    assert got.start_ns == 1_700_000_000_000_000_000
    assert got.input_tokens == 1200
    assert got.attributes["arr"] == ["x"]
    assert got.events[0]["time_ns"] == 1_700_000_000_100_000_000

    snake = orjson.dumps(
        {
            "resource_spans": [
                {
                    "scope_spans": [
                        {
                            "spans": [
                                {
                                    "trace_id": TRACE.upper(),
                                    "span_id": SPAN,
                                    "name": "x",
                                    "start_time_unix_nano": 10,
                                    "end_time_unix_nano": 20,
                                    "kind": 2,
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    )
    (got,) = decode(snake, "application/json; charset=utf-8").spans
    assert (got.trace_id, got.kind, got.end_ns) == (TRACE, 2, 20)


def test_json_base64_ids_from_the_protobuf_json_mapping_are_accepted() -> None:
    body = json_request(
        json_span(
            traceId=base64.b64encode(bytes.fromhex(TRACE)).decode(),
            spanId=base64.b64encode(bytes.fromhex(SPAN)).decode(),
        )
    )
    (got,) = decode(body, "application/json").spans
    assert (got.trace_id, got.span_id) == (TRACE, SPAN)


def test_invalid_spans_are_rejected_one_by_one_as_partial_success() -> None:
    body = json_request(
        json_span(),
        json_span(spanId="0000000000000000"),
        json_span(spanId="abc"),
        json_span(spanId="eee19b7ec3c1b175", traceId="00000000000000000000000000000000"),
        json_span(spanId="eee19b7ec3c1b176", kind="SPAN_KIND_NOPE"),
        json_span(spanId="eee19b7ec3c1b177", startTimeUnixNano="soon"),
    )
    result = decode(body, "application/json")
    assert [s.span_id for s in result.spans] == [SPAN]
    assert result.rejected == 5
    assert "invalid span id" in result.error_message

    as_json = orjson.loads(encode_response(result, json=True))
    assert as_json == {
        "partialSuccess": {"rejectedSpans": "5", "errorMessage": result.error_message}
    }
    response = ExportTraceServiceResponse.FromString(encode_response(result, json=False))
    assert response.partial_success.rejected_spans == 5


@pytest.mark.usefixtures("protobuf_reader")
def test_full_success_response_is_empty() -> None:
    result = decode(pb_request(pb_span()))
    assert encode_response(result, json=True) == b"{}"
    response = ExportTraceServiceResponse.FromString(encode_response(result, json=False))
    assert not response.HasField("partial_success")


@pytest.mark.usefixtures("protobuf_reader")
def test_protobuf_parent_id_of_the_wrong_length_rejects_the_span() -> None:
    result = decode(pb_request(pb_span(parent_span_id=b"\x01\x02")))
    assert (len(result.spans), result.rejected) == (0, 1)
    assert "parent_span_id" in result.error_message


@pytest.mark.usefixtures("protobuf_reader")
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"kind": 99}, "unknown span kind 99"),
        ({"status": Status(code=7)}, "unknown status code 7"),
        ({"start_time_unix_nano": 2**64 - 1, "end_time_unix_nano": 2**64 - 1}, "year 2262"),
        ({"end_time_unix_nano": 2**63}, "year 2262"),
    ],
)
def test_protobuf_values_no_column_holds_reject_the_span_not_the_batch(
    fields: dict[str, Any], needle: str
) -> None:
    # Proto3 enums accept any number and times are unsigned: a column refusing one of them
    # would fail the batch's transaction on every retry.
    result = decode(pb_request(pb_span(**fields), pb_span()))
    assert (len(result.spans), result.rejected) == (1, 1)
    assert needle in result.error_message


@pytest.mark.usefixtures("protobuf_reader")
def test_unfinished_span_gets_zero_latency_not_negative() -> None:
    (got,) = decode(pb_request(pb_span(end_time_unix_nano=0))).spans
    assert got.end_ns == got.start_ns


@pytest.mark.usefixtures("protobuf_reader")
@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (b"\xff\xff\xff", "application/x-protobuf", "not a valid protobuf"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "must be a JSON object"),
        (b'{"resourceSpans": {}}', "application/json", "resourceSpans must be an array"),
        (b'{"resourceSpans": [1]}', "application/json", "resourceSpans[0] must be an object"),
    ],
)
def test_malformed_bodies_are_400_with_a_message(
    body: bytes, content_type: str, needle: str
) -> None:
    with pytest.raises(OtlpError, match=re.escape(needle)) as caught:
        decode(body, content_type)
    assert caught.value.status == 400


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/grpc"])
def test_unknown_content_type_is_415(content_type: str | None) -> None:
    with pytest.raises(OtlpError, match="Content-Type") as caught:
        decode_request(
            b"",
            content_type=content_type,
            content_encoding=None,
            max_bytes=MB,
            max_message_chars=100,
        )
    assert caught.value.status == 415


@pytest.mark.usefixtures("protobuf_reader")
def test_gzip_and_deflate_bodies_decode() -> None:
    raw = pb_request(pb_span())
    assert len(decode(gzip.compress(raw), content_encoding="gzip").spans) == 1
    assert len(decode(zlib.compress(raw), content_encoding="deflate").spans) == 1


def test_unknown_encoding_is_415_and_corrupt_gzip_is_400() -> None:
    with pytest.raises(OtlpError) as caught:
        decode(b"x", content_encoding="br")
    assert caught.value.status == 415
    with pytest.raises(OtlpError, match="not valid gzip") as caught:
        decode(b"definitely not gzip", content_encoding="gzip")
    assert caught.value.status == 400
    with pytest.raises(OtlpError, match="truncated"):
        decode(gzip.compress(pb_request(pb_span()))[:-12], content_encoding="gzip")


def test_gzip_bomb_stops_at_the_cap_with_413() -> None:
    bomb = gzip.compress(b"\x00" * (64 * MB))  # ~64 KB on the wire
    assert len(bomb) < MB
    with pytest.raises(OtlpError, match="exceeds") as caught:
        decode(bomb, content_encoding="gzip", max_bytes=MB)
    assert caught.value.status == 413


@pytest.mark.usefixtures("protobuf_reader")
def test_protobuf_zero_empty_and_unset_values_keep_their_types() -> None:
    # Decoding reads string_value and int_value before WhichOneof: an empty or zero value
    # must still come out as what was sent, never as another type's default.
    def kv(key: str, value: AnyValue) -> KeyValue:
        return KeyValue(key=key, value=value)

    array = ArrayValue(
        values=[
            AnyValue(string_value=""),
            AnyValue(int_value=0),
            AnyValue(),
            AnyValue(bool_value=False),
            AnyValue(string_value="x"),
        ]
    )
    kvlist = KeyValueList(values=[kv("e", AnyValue(string_value="")), kv("z", AnyValue())])
    attrs = [
        kv("empty", AnyValue(string_value="")),
        kv("zero", AnyValue(int_value=0)),
        kv("negative", AnyValue(int_value=-3)),
        kv("unset", AnyValue()),
        kv("false", AnyValue(bool_value=False)),
        kv("d0", AnyValue(double_value=0.0)),
        kv("no bytes", AnyValue(bytes_value=b"")),
        kv("array", AnyValue(array_value=array)),
        kv("empty array", AnyValue(array_value=ArrayValue())),
        kv("map", AnyValue(kvlist_value=kvlist)),
        kv("dup", AnyValue(int_value=1)),
        kv("text", AnyValue(string_value="t")),
        kv("dup", AnyValue(string_value="")),  # the later value wins, in the first one's place
    ]
    event = PbSpan.Event(name="e", time_unix_nano=1, attributes=[kv("n", AnyValue(int_value=0))])
    (got,) = decode(pb_request(pb_span(attributes=attrs, events=[event]))).spans
    typed = {key: (type(value), value) for key, value in got.attributes.items()}
    assert typed == {
        "empty": (str, ""),
        "zero": (int, 0),
        "negative": (int, -3),
        "unset": (type(None), None),
        "false": (bool, False),
        "d0": (float, 0.0),
        "no bytes": (str, ""),
        "array": (list, ["", 0, None, False, "x"]),
        "empty array": (list, []),
        "map": (dict, {"e": "", "z": None}),
        "dup": (str, ""),
        "text": (str, "t"),
        "otel.scope.name": (str, "lib"),
    }
    assert list(got.attributes) == [*typed]  # insertion order is the sent order
    assert [type(v) for v in got.attributes["array"]] == [str, int, type(None), bool, str]
    assert got.events == [{"name": "e", "time_ns": 1, "attributes": {"n": 0}}]
    assert type(got.events[0]["attributes"]["n"]) is int
