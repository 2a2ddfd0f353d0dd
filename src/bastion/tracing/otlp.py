"""OTLP/HTTP trace requests: decoding (protobuf and JSON, compressed or not) and responses.

The JSON encoding differs from protobuf's canonical JSON mapping in ways exporters rely on:
trace and span ids are hex strings (not base64), 64-bit integers may be strings, enums may be
names or numbers, and keys are lowerCamelCase (snake_case is accepted too). Invalid spans are
dropped one by one and reported as a partial success, so one bad span never costs a batch.

Protobuf bodies are read by a C reader (``_otlp_wire``) where it was compiled, and by the
protobuf runtime for whatever that reader leaves to it; both give the same spans.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from bastion.tracing.model import Span, SpanKind, StatusCode
from bastion.tracing.normalize import normalize

if TYPE_CHECKING:
    from bastion.tracing._otlp_wire import WireRequest, WireSpan

_read_wire: Callable[[bytes], WireRequest | None] | None
try:
    from bastion.tracing._otlp_wire import read_request as _read_wire
except ImportError:  # installed without a C compiler: the protobuf runtime reads every request
    _read_wire = None

__all__ = ["DecodeResult", "OtlpError", "decode_request", "encode_response"]

PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPE = "application/json"

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_HEX = frozenset("0123456789abcdef")
_INT64_MAX = 2**63 - 1
_SPAN_KINDS = frozenset(int(kind) for kind in SpanKind)
_STATUS_CODES = frozenset(int(code) for code in StatusCode)


class OtlpError(ValueError):
    """The request as a whole cannot be accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class DecodeResult:
    """Spans accepted from one request, and how many were rejected and why (the first reason)."""

    spans: list[Span] = field(default_factory=list)
    rejected: int = 0
    error_message: str = ""

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if not self.error_message:
            self.error_message = reason


def decode_request(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    max_bytes: int,
    max_message_chars: int,
) -> DecodeResult:
    """Decode an ``ExportTraceServiceRequest`` body into normalised spans.

    Raises :class:`OtlpError` with status 415 for an unsupported content type or encoding, 413
    when the decompressed body passes ``max_bytes`` (a gzip bomb stops there), 400 when the body
    is not a valid request at all.
    """
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in PROTOBUF_TYPES and media_type != JSON_TYPE:
        shown = media_type or "none"
        raise OtlpError(
            f"unsupported Content-Type {shown!r}: use application/x-protobuf or application/json",
            status=415,
        )
    raw = _decompress(body, content_encoding, max_bytes)
    result = DecodeResult()
    if media_type == JSON_TYPE:
        _decode_json(raw, result)
    else:
        _decode_protobuf(raw, result)
    for span in result.spans:
        normalize(span, max_message_chars=max_message_chars)
    return result


def encode_response(result: DecodeResult, *, json: bool) -> bytes:
    """The ``ExportTraceServiceResponse``, with ``partial_success`` when spans were rejected."""
    if json:
        if not result.rejected:
            return b"{}"
        partial = {"rejectedSpans": str(result.rejected), "errorMessage": result.error_message}
        return orjson.dumps({"partialSuccess": partial})
    response = ExportTraceServiceResponse()
    if result.rejected:
        response.partial_success.rejected_spans = result.rejected
        response.partial_success.error_message = result.error_message
    return bytes(response.SerializeToString())


# --- decompression ------------------------------------------------------------------------


def _decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = 32 + zlib.MAX_WBITS  # zlib or gzip header, detected
    else:
        raise OtlpError(
            f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none", status=415
        )
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    pending = body
    try:
        # Inflate in bounded steps so a small bomb never expands past the cap in memory.
        while pending:
            out += inflater.decompress(pending, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise OtlpError(f"decompressed body exceeds {max_bytes} bytes", status=413)
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        out += inflater.flush()
    except zlib.error as exc:
        raise OtlpError(f"body is not valid {encoding} data: {exc}") from exc
    if len(out) > max_bytes:
        raise OtlpError(f"decompressed body exceeds {max_bytes} bytes", status=413)
    if not inflater.eof:
        raise OtlpError(f"body is truncated {encoding} data")
    return bytes(out)


# --- protobuf -----------------------------------------------------------------------------


def _decode_protobuf(raw: bytes, result: DecodeResult) -> None:
    # The C reader builds only the objects kept, straight from the wire bytes, at about a
    # quarter of the runtime's cost; it returns None for any request it does not handle
    # exactly as the runtime would (see _otlp_wire.c), and the runtime then decides.
    parsed = _read_wire(raw) if _read_wire is not None else None
    if parsed is None:
        _decode_protobuf_runtime(raw, result)
        return
    for resource, scopes in parsed:
        for scope_name, wire_spans in scopes:
            scope = scope_name or None
            for wire in wire_spans:
                span = _wire_span(wire, resource, scope, result)
                if span is not None:
                    result.spans.append(span)


def _wire_span(
    wire: WireSpan, resource: dict[str, Any], scope: str | None, result: DecodeResult
) -> Span | None:
    (trace_id, span_id, parent, name, kind, start_ns, end_ns, attributes, events, code, message) = (
        wire
    )
    reason = _invalid_binary_ids(trace_id, span_id, parent)
    if reason is not None:
        result.reject(reason)
        return None
    if scope is not None:
        attributes.setdefault("otel.scope.name", scope)
    return _build_span(
        trace_id=trace_id,
        span_id=span_id,
        parent=parent or None,
        name=name,
        kind=kind,
        start_ns=start_ns,
        end_ns=end_ns,
        status_code=code,
        status_message=message or None,
        attributes=attributes,
        resource=resource,
        events=events,
        result=result,
    )


def _decode_protobuf_runtime(raw: bytes, result: DecodeResult) -> None:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise OtlpError(f"body is not a valid protobuf ExportTraceServiceRequest: {exc}") from exc
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name or None
            for pb in scope_spans.spans:
                span = _pb_span(pb, resource, scope, result)
                if span is not None:
                    result.spans.append(span)


def _pb_span(
    pb: PbSpan, resource: dict[str, Any], scope: str | None, result: DecodeResult
) -> Span | None:
    trace_id = pb.trace_id.hex()
    span_id = pb.span_id.hex()
    parent = pb.parent_span_id.hex()  # each field read builds a new Python object: read once
    reason = _invalid_binary_ids(trace_id, span_id, parent)
    if reason is not None:
        result.reject(reason)
        return None
    attributes = _pb_attributes(pb.attributes)
    if scope is not None:
        attributes.setdefault("otel.scope.name", scope)
    pb_events = pb.events[:]
    events = (
        [
            {
                "name": event.name,
                "time_ns": event.time_unix_nano,
                "attributes": _pb_attributes(event.attributes),
            }
            for event in pb_events
        ]
        if pb_events  # most spans have none: skip the comprehension
        else []
    )
    status = pb.status
    return _build_span(
        trace_id=trace_id,
        span_id=span_id,
        parent=parent or None,
        name=pb.name,
        kind=pb.kind,
        start_ns=pb.start_time_unix_nano,
        end_ns=pb.end_time_unix_nano,
        status_code=status.code,
        status_message=status.message or None,
        attributes=attributes,
        resource=resource,
        events=events,
        result=result,
    )


def _pb_attributes(key_values: Any) -> dict[str, Any]:
    # This runs for every attribute of every span, so the common cases are inlined.
    out: dict[str, Any] = {}
    # Small repeated fields are sliced into a list first: upb's containers have no ``__iter__``,
    # so a loop over one indexes it until IndexError, which costs more than the slice.
    for kv in key_values[:]:
        value = kv.value
        # Most values are non-empty strings, and reading ``string_value`` is much cheaper than
        # ``WhichOneof``; it reads "" for any other type, so only then is the oneof consulted.
        text = value.string_value
        if text:
            out[kv.key] = text
            continue
        # Likewise a non-zero ``int_value`` can only be an integer attribute.
        number = value.int_value
        if number:
            out[kv.key] = number
            continue
        out[kv.key] = _pb_oneof(value, value.WhichOneof("value"))
    return out


def _pb_value(value: AnyValue) -> Any:
    text = value.string_value
    return text if text else _pb_oneof(value, value.WhichOneof("value"))


def _pb_oneof(value: AnyValue, which: str | None) -> Any:
    """``value`` as Python, given which field of its oneof is set (None: unset)."""
    if which is None:
        return None
    if which == "array_value":
        return [_pb_value(v) for v in value.array_value.values[:]]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values[:]}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)  # an empty string_value is "" here


# --- JSON ---------------------------------------------------------------------------------


def _decode_json(raw: bytes, result: DecodeResult) -> None:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OtlpError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise OtlpError("body must be a JSON object with a resourceSpans array")
    resource_spans_list = _field(document, "resourceSpans", "resource_spans", default=[])
    if not isinstance(resource_spans_list, list):
        raise OtlpError("resourceSpans must be an array")
    for i, resource_spans in enumerate(resource_spans_list):
        if not isinstance(resource_spans, dict):
            raise OtlpError(f"resourceSpans[{i}] must be an object")
        resource_obj = resource_spans.get("resource") or {}
        resource = _json_attributes(
            resource_obj.get("attributes") if isinstance(resource_obj, dict) else None
        )
        scope_list = _field(resource_spans, "scopeSpans", "scope_spans", default=[])
        if not isinstance(scope_list, list):
            raise OtlpError(f"resourceSpans[{i}].scopeSpans must be an array")
        for j, scope_spans in enumerate(scope_list):
            if not isinstance(scope_spans, dict):
                raise OtlpError(f"resourceSpans[{i}].scopeSpans[{j}] must be an object")
            scope_obj = scope_spans.get("scope") or {}
            scope = scope_obj.get("name") if isinstance(scope_obj, dict) else None
            spans = scope_spans.get("spans") or []
            if not isinstance(spans, list):
                raise OtlpError(f"resourceSpans[{i}].scopeSpans[{j}].spans must be an array")
            for obj in spans:
                span = _json_span(obj, resource, scope if isinstance(scope, str) else None, result)
                if span is not None:
                    result.spans.append(span)


def _field(obj: Mapping[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake, default)
    return value


def _json_span(
    obj: Any, resource: dict[str, Any], scope: str | None, result: DecodeResult
) -> Span | None:
    if not isinstance(obj, dict):
        result.reject("a span is not a JSON object")
        return None
    trace_id = _json_id(_field(obj, "traceId", "trace_id"), 16)
    span_id = _json_id(_field(obj, "spanId", "span_id"), 8)
    reason = _invalid_ids(trace_id, span_id)
    if reason is not None:
        result.reject(reason)
        return None
    assert trace_id is not None
    assert span_id is not None
    raw_parent = _field(obj, "parentSpanId", "parent_span_id")
    parent = _json_id(raw_parent, 8) if raw_parent else None
    if raw_parent and parent is None:
        result.reject(f"span {span_id}: parentSpanId {raw_parent!r} is not an 8-byte id")
        return None
    try:
        start_ns = _json_int(_field(obj, "startTimeUnixNano", "start_time_unix_nano", 0))
        end_ns = _json_int(_field(obj, "endTimeUnixNano", "end_time_unix_nano", 0))
        kind = _json_enum(obj.get("kind", 0), SpanKind, "SPAN_KIND_")
        status = obj.get("status") or {}
        status_code = _json_enum(status.get("code", 0), StatusCode, "STATUS_CODE_")
    except (TypeError, ValueError, AttributeError) as exc:
        result.reject(f"span {span_id}: {exc}")
        return None
    attributes = _json_attributes(obj.get("attributes"))
    if scope is not None:
        attributes.setdefault("otel.scope.name", scope)
    events: list[dict[str, Any]] = []
    for event in obj.get("events") or []:
        if isinstance(event, dict):
            events.append(
                {
                    "name": str(event.get("name", "")),
                    "time_ns": _json_int_or_zero(_field(event, "timeUnixNano", "time_unix_nano")),
                    "attributes": _json_attributes(event.get("attributes")),
                }
            )
    message = status.get("message") if isinstance(status, dict) else None
    return _build_span(
        trace_id=trace_id,
        span_id=span_id,
        parent=parent,
        name=str(obj.get("name", "")),
        kind=kind,
        start_ns=start_ns,
        end_ns=end_ns,
        status_code=status_code,
        status_message=str(message) if message else None,
        attributes=attributes,
        resource=resource,
        events=events,
        result=result,
    )


def _json_id(value: Any, size: int) -> str | None:
    """A hex id as OTLP/JSON sends it; base64 (protobuf's JSON mapping) is accepted too."""
    if not isinstance(value, str) or not value:
        return None
    lowered = value.lower()
    if len(lowered) == size * 2 and set(lowered) <= _HEX:
        return lowered
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.hex() if len(decoded) == size else None


def _json_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {value!r}")


def _json_int_or_zero(value: Any) -> int:
    try:
        return _json_int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _json_enum(value: Any, enum: type[SpanKind] | type[StatusCode], prefix: str) -> int:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        name = value.upper().removeprefix(prefix)
        try:
            return int(enum[name])
        except KeyError:
            raise ValueError(f"unknown {enum.__name__} {value!r}") from None
    number = _json_int(value)
    if number not in {member.value for member in enum}:
        raise ValueError(f"unknown {enum.__name__} {number}")
    return number


def _json_attributes(values: Any) -> dict[str, Any]:
    if not isinstance(values, list):
        return {}
    out: dict[str, Any] = {}
    for kv in values:
        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
            out[kv["key"]] = _json_value(kv.get("value"))
    return out


_JSON_SCALARS: dict[str, Callable[[Any], Any]] = {
    "stringValue": str,
    "string_value": str,
    "boolValue": bool,
    "bool_value": bool,
    "intValue": _json_int_or_zero,
    "int_value": _json_int_or_zero,
    "doubleValue": float,
    "double_value": float,
    "bytesValue": str,  # already base64 text in JSON
    "bytes_value": str,
}


def _json_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key, convert in _JSON_SCALARS.items():
        if key in value:
            try:
                return convert(value[key])
            except (TypeError, ValueError):
                return value[key]
    array = _field(value, "arrayValue", "array_value")
    if isinstance(array, dict):
        return [_json_value(v) for v in array.get("values") or []]
    kvlist = _field(value, "kvlistValue", "kvlist_value")
    if isinstance(kvlist, dict):
        return _json_attributes(kvlist.get("values"))
    return None


# --- shared -------------------------------------------------------------------------------


def _invalid_ids(trace_id: str | None, span_id: str | None) -> str | None:
    if trace_id is None or len(trace_id) != 32 or trace_id == _ZERO_TRACE:
        return "span with an invalid trace id (want 16 non-zero bytes)"
    if span_id is None or len(span_id) != 16 or span_id == _ZERO_SPAN:
        return f"span in trace {trace_id} with an invalid span id (want 8 non-zero bytes)"
    return None


def _invalid_binary_ids(trace_id: str, span_id: str, parent: str) -> str | None:
    """Why the ids of a protobuf span (as hex, "" when absent) are unusable, else None."""
    reason = _invalid_ids(trace_id, span_id)
    if reason is None and parent and len(parent) != 16:
        reason = f"span {span_id}: parent_span_id must be 8 bytes"
    return reason


def _build_span(
    *,
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    status_code: int,
    status_message: str | None,
    attributes: dict[str, Any],
    resource: dict[str, Any],
    events: list[dict[str, Any]],
    result: DecodeResult,
) -> Span | None:
    if start_ns <= 0:
        result.reject(f"span {span_id}: start time is missing")
        return None
    # Times are stored as BIGINT and kind and status as SMALLINT: a value they cannot hold
    # would make the database refuse the whole batch, again on every retry.
    if start_ns > _INT64_MAX or end_ns > _INT64_MAX:
        result.reject(f"span {span_id}: a time is past the year 2262")
        return None
    if kind not in _SPAN_KINDS:
        result.reject(f"span {span_id}: unknown span kind {kind}")
        return None
    if status_code not in _STATUS_CODES:
        result.reject(f"span {span_id}: unknown status code {status_code}")
        return None
    if end_ns < start_ns:
        end_ns = start_ns  # an unfinished or clock-skewed span still counts, with zero latency
    service = resource.get("service.name")
    # Positional, in Span's field order: matching 13 keywords against its 34 parameters costs
    # half a microsecond a span, as much as the rest of this function.
    return Span(
        trace_id,
        span_id,
        name,
        start_ns,
        end_ns,
        None if parent == _ZERO_SPAN else parent,  # parent_span_id
        kind,
        status_code,
        status_message,
        attributes,
        resource,
        events,
        str(service) if service is not None else None,  # service_name
    )
