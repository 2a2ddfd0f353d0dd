"""Every gateway call becomes a span: what was asked, what was served, and what it cost.

A :class:`Call` is filled in as the request goes (attribution, deployment, usage, output),
then turned into a :class:`~bastion.tracing.model.Span` and queued for the batch writer without
waiting: the request path never touches the database.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from bastion.ingest.pipeline import Backpressure, IngestPipeline
from bastion.providers.translate import StreamSummary, Usage
from bastion.tracing.attributes import (
    GATEWAY_API,
    GATEWAY_DEPLOYMENT,
    GATEWAY_STREAM,
    PROMPT_NAME,
    PROMPT_VERSION,
    REQUEST_ID,
    TEAM,
    USAGE_ESTIMATED,
)
from bastion.tracing.model import Span, SpanKind, StatusCode
from bastion.tracing.normalize import truncate

__all__ = ["AnswerCapture", "Call", "Recorder", "TraceContext", "estimate_tokens"]

log = logging.getLogger("bastion.gateway")

_ATTRIBUTION_HEADERS = {
    "x-bastion-user": "user_id",
    "x-bastion-session": "session_id",
    "x-bastion-feature": "feature",
    "x-bastion-tenant": "tenant",
    "x-bastion-team": "team",
}
_METADATA_KEYS = {
    "user": "user_id",
    "user_id": "user_id",
    "session": "session_id",
    "session_id": "session_id",
    "feature": "feature",
    "tenant": "tenant",
    "team": "team",
}


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context: the caller's trace (if any) and this call's own span id."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    sampled: bool = True

    @classmethod
    def from_headers(cls, headers: Any) -> TraceContext:
        parent = headers.get("traceparent", "")
        parts = parent.strip().split("-")
        if (
            len(parts) >= 4
            and len(parts[0]) == 2
            and len(parts[1]) == 32
            and len(parts[2]) == 16
            and _is_hex(parts[1])
            and _is_hex(parts[2])
            and parts[1] != "0" * 32
            and parts[2] != "0" * 16
        ):
            return cls(parts[1].lower(), os.urandom(8).hex(), parts[2].lower())
        return cls(os.urandom(16).hex(), os.urandom(8).hex(), None)

    def traceparent(self) -> str:
        """The header to send upstream: this span is the provider call's parent."""
        return f"00-{self.trace_id}-{self.span_id}-01"


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def estimate_tokens(text: str) -> int:
    """A provider-independent estimate (about four characters per token) when usage is absent."""
    return (len(text) + 3) // 4 if text else 0


class AnswerCapture:
    """Set on a call whose answer should be kept (response cache): the relay fills in the
    client-format body, or the provider-format summary of a stream that completed."""

    __slots__ = ("body", "kind", "summary")

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.summary: StreamSummary | None = None
        self.kind: str | None = None


@dataclass(slots=True)
class Call:
    """One gateway request, filled in as it is served."""

    api: str  # "openai" | "anthropic"
    operation: str  # "chat" | "embeddings" | "models"
    request_id: str
    context: TraceContext
    start_ns: int = field(default_factory=time.time_ns)
    start_perf: float = field(default_factory=time.perf_counter)
    project_id: int | None = None
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    deployment: str | None = None
    stream: bool = False
    request_body: Any = None
    output: Any = None
    usage: Usage = field(default_factory=Usage)
    status: int = 200
    error_class: str | None = None
    error_message: str | None = None
    ttft_ms: float | None = None
    attribution: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    prompt_name: str | None = None  # a request naming a registry prompt
    prompt_version: int | None = None
    capture: AnswerCapture | None = None  # None: the relay keeps no copy of the answer
    cost_usd: float | None = None  # set when known here (a cache hit costs 0); else priced later
    release_id: str | None = None  # the release a routed request was served by (releases)
    # A shadow copy of a request on this route (releases.shadow): the gateway's own traffic,
    # counted by `shadow` rate limits and budgets only, never by the caller's.
    shadow_route: str | None = None
    fallbacks: tuple[str, ...] | None = None  # the release's fallback aliases, else the alias's
    input_estimate: int | None = None  # see estimated_input_tokens

    def estimated_input_tokens(self, body: Any) -> int:
        """A rough input size of the served request ``body`` (about four bytes of JSON per
        token: messages, system, tools, input), serialised once per call — admission and the
        context-window check both need it."""
        if self.input_estimate is None:
            parts = [body.get(k) for k in ("messages", "system", "tools", "input") if k in body]
            self.input_estimate = (len(orjson.dumps(parts)) + 3) // 4
        return self.input_estimate

    def attribute_from(self, request: web.Request, body: Any) -> None:
        """User, session, feature and tenant from headers, else the body's ``user``/metadata."""
        if isinstance(body, dict):
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                for key, target in _METADATA_KEYS.items():
                    value = metadata.get(key)
                    if isinstance(value, str | int) and value != "":
                        self.attribution.setdefault(target, str(value)[:256])
            user = body.get("user")
            if isinstance(user, str) and user:
                self.attribution["user_id"] = user[:256]
        for header, target in _ATTRIBUTION_HEADERS.items():
            value = request.headers.get(header)
            if value:
                self.attribution[target] = value[:256]

    def mark_first_byte(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.start_perf) * 1000.0

    def fail(self, status: int, error_class: str, message: str) -> None:
        self.status = status
        self.error_class = error_class
        self.error_message = message

    def to_span(self, max_message_chars: int) -> Span:
        latency_ns = int((time.perf_counter() - self.start_perf) * 1e9)
        model = self.requested_model or "unknown"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            GATEWAY_API: self.api,
            REQUEST_ID: self.request_id,
            "http.response.status_code": self.status,
            **self.attributes,
        }
        if self.deployment:
            attributes[GATEWAY_DEPLOYMENT] = self.deployment
        if self.stream:
            attributes[GATEWAY_STREAM] = True
        if self.usage.estimated:
            attributes[USAGE_ESTIMATED] = True
        if self.error_message:
            attributes["error.message"] = truncate(self.error_message, 2000)
        team = self.attribution.get("team")
        if team is not None:
            attributes[TEAM] = team
        if self.prompt_name is not None:
            attributes[PROMPT_NAME] = self.prompt_name
        if self.prompt_version is not None:
            attributes[PROMPT_VERSION] = self.prompt_version
        is_error = self.error_class is not None
        return Span(
            trace_id=self.context.trace_id,
            span_id=self.context.span_id,
            parent_span_id=self.context.parent_span_id,
            name=f"{self.operation} {model}",
            kind=SpanKind.SERVER,
            start_ns=self.start_ns,
            end_ns=self.start_ns + latency_ns,
            status_code=StatusCode.ERROR if is_error else StatusCode.OK,
            status_message=self.error_message if is_error else None,
            attributes=attributes,
            service_name="bastion-gateway",
            operation=self.operation,
            provider=self.provider,
            request_model=self.requested_model,
            response_model=self.served_model,
            input_tokens=self.usage.input_tokens,
            output_tokens=self.usage.output_tokens,
            cost_usd=self.cost_usd,
            cached_tokens=self.usage.cached_tokens,
            cache_write_tokens=self.usage.cache_write_tokens,
            ttft_ms=self.ttft_ms,
            error_class=self.error_class,
            user_id=self.attribution.get("user_id"),
            session_id=self.attribution.get("session_id"),
            feature=self.attribution.get("feature"),
            tenant=self.attribution.get("tenant"),
            prompt_name=self.prompt_name,
            prompt_version=self.prompt_version,
            release_id=self.release_id,
            input=_text(self.request_body, max_message_chars),
            output=_text(self.output, max_message_chars),
            request_id=self.request_id,
        )


def _text(value: Any, max_chars: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return truncate(text, max_chars)


class Recorder:
    """Queues call spans for the batch writer; never blocks, never fails the request."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        max_message_chars: int,
        default_project_id: int,
        registry: CollectorRegistry,
    ) -> None:
        self.pipeline = pipeline
        self.max_message_chars = max_message_chars
        self.default_project_id = default_project_id
        self.dropped = Counter(
            "bastion_gateway_spans_dropped",
            "Gateway call spans not recorded because the ingest queue was full",
            registry=registry,
        )
        self.requests = Counter(
            "bastion_gateway_requests",
            "Gateway requests by API, operation and outcome",
            ["api", "operation", "outcome"],
            registry=registry,
        )

    def event(
        self, name: str, attributes: dict[str, Any], *, project_id: int | None = None
    ) -> None:
        """Record a gateway event (a breaker transition, a budget threshold) as a span of
        operation ``event``: durable through the same queue as calls, listed by the trace API
        (``operation=event``), never counted as a model call."""
        now = time.time_ns()
        span = Span(
            trace_id=os.urandom(16).hex(),
            span_id=os.urandom(8).hex(),
            name=name,
            start_ns=now,
            end_ns=now,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            service_name="bastion-gateway",
            operation="event",
        )
        try:
            self.pipeline.submit_nowait(
                self.default_project_id if project_id is None else project_id,
                [span],
                _log_failure,
            )
        except Backpressure:
            self.dropped.inc()

    def record(self, call: Call) -> None:
        outcome = "ok" if call.error_class is None else call.error_class
        self.requests.labels(call.api, call.operation, outcome).inc()
        project_id = call.project_id if call.project_id is not None else self.default_project_id
        if call.project_id is None:
            # Unauthenticated: keep the fact of the rejection, never the body it carried.
            call.request_body = None
        span = call.to_span(self.max_message_chars)
        try:
            self.pipeline.submit_nowait(project_id, [span], _log_failure)
        except Backpressure:
            self.dropped.inc()


def _log_failure(error: BaseException | None) -> None:
    if error is not None:
        log.error("a gateway span could not be made durable: %s", error)
