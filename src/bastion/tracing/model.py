"""The span model: OpenTelemetry-shaped, with first-class LLM fields.

Receivers (OTLP, the gateway, the SDK) build :class:`Span` objects;
:func:`bastion.tracing.normalize.normalize` fills the LLM fields from whichever attribute
convention the producer used; the ingest pipeline prices them with the catalog and persists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

__all__ = ["MODEL_OPERATIONS", "Span", "SpanKind", "StatusCode"]

# GenAI operations that call a model (tool calls and agent steps are not model calls).
MODEL_OPERATIONS = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "rerank"}
)


class SpanKind(IntEnum):
    """OpenTelemetry span kinds, numbered as in the OTLP protocol."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(IntEnum):
    """OpenTelemetry status codes, numbered as in the OTLP protocol."""

    UNSET = 0
    OK = 1
    ERROR = 2


@dataclass(slots=True)
class Span:
    """One span. Ids are lower-case hex (32 chars for traces, 16 for spans); times are Unix ns."""

    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    parent_span_id: str | None = None
    kind: int = SpanKind.INTERNAL
    status_code: int = StatusCode.UNSET
    status_message: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    service_name: str | None = None
    # LLM fields (None when the span is not an LLM call or the producer did not say).
    operation: str | None = None
    provider: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    cost_usd: float | None = None
    ttft_ms: float | None = None
    error_class: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    feature: str | None = None
    tenant: str | None = None
    prompt_name: str | None = None
    prompt_version: int | None = None
    release_id: str | None = None
    input: str | None = None
    output: str | None = None
    # Set by the gateway alone, on the spans of the calls it served (never read from OTLP): it
    # tells the gateway's record of a call from a client's span of the same call. Last, so a
    # spool segment written before it existed still reads (bastion.ingest.spool).
    request_id: str | None = None

    @property
    def latency_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6

    @property
    def is_llm(self) -> bool:
        """True for spans that describe a model call (they feed the LLM metrics)."""
        return self.operation in MODEL_OPERATIONS or self.request_model is not None

    @property
    def is_error(self) -> bool:
        return self.status_code == StatusCode.ERROR or self.error_class is not None

    @property
    def model(self) -> str | None:
        """The model that served the call, else the one asked for."""
        return self.response_model or self.request_model
