"""OTLP trace requests read from protobuf wire bytes (a C fast path; see ``_otlp_wire.c``)."""

from typing import Any

# (trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes, events,
#  status_code, status_message): ids in lower-case hex, "" for an absent id or string.
WireSpan = tuple[str, str, str, str, int, int, int, dict[str, Any], list[dict[str, Any]], int, str]
# [(resource attributes, [(scope name, [span, ...]), ...]), ...]
WireRequest = list[tuple[dict[str, Any], list[tuple[str, list[WireSpan]]]]]

def read_request(body: bytes, /) -> WireRequest | None: ...
