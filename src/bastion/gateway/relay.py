"""Relaying a provider's answer to the client: whole bodies, streams, and upstream errors.

Same format in and out: the provider's bytes go through unchanged (a stream event by event).
Different formats: each body or event is translated as it arrives. Either way the answer is
observed once on its way through, for the span.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import aiohttp
import orjson
from aiohttp import web

from bastion.gateway.errors import Api, GatewayError
from bastion.gateway.recording import Call, estimate_tokens
from bastion.providers.config import Deployment
from bastion.providers.sse import SseEvent, SseParser, encode_event
from bastion.providers.translate import (
    AnthropicStreamObserver,
    AnthropicToOpenAIStream,
    OpenAIStreamObserver,
    OpenAIToAnthropicStream,
    StreamSummary,
    anthropic_to_openai_response,
    anthropic_usage,
    openai_to_anthropic_response,
    openai_usage,
)
from bastion.tracing.attributes import GATEWAY_STREAM_EVENTS

__all__ = ["relay_body", "relay_stream", "upstream_error"]

_MAX_UPSTREAM_BODY = 64 * 1024 * 1024


async def _read(response: aiohttp.ClientResponse, deployment: Deployment) -> bytes:
    try:
        raw = await response.content.read(_MAX_UPSTREAM_BODY + 1)
    except TimeoutError as exc:
        raise GatewayError(
            504,
            f"provider {deployment.provider.name!r} stalled while sending its response",
            error_class="upstream_timeout",
        ) from exc
    except aiohttp.ClientError as exc:
        raise GatewayError(
            502,
            f"provider {deployment.provider.name!r} broke off its response: {type(exc).__name__}",
            error_class="upstream_interrupted",
        ) from exc
    finally:
        response.release()
    if len(raw) > _MAX_UPSTREAM_BODY:
        raise GatewayError(
            502,
            f"provider {deployment.provider.name!r} sent more than {_MAX_UPSTREAM_BODY} bytes",
            error_class="upstream_invalid_response",
        )
    return raw


def _upstream_message(raw: bytes) -> str | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return None


def upstream_error(deployment: Deployment, status: int, raw: bytes, headers: Any) -> GatewayError:
    """The gateway's answer to a provider's error status."""
    name = deployment.provider.name
    message = _upstream_message(raw)
    if status in (401, 403):
        # The gateway's own provider credentials: never relay (messages can echo key fragments).
        hint = (
            f"; check {deployment.provider.api_key_env}" if deployment.provider.api_key_env else ""
        )
        return GatewayError(
            502,
            f"provider {name!r} rejected the gateway's credentials (HTTP {status}){hint}",
            error_class="upstream_auth",
        )
    if status == 429:
        retry = headers.get("Retry-After")
        return GatewayError(
            429,
            f"provider {name!r} is rate limiting: {message or 'too many requests'}",
            error_class="upstream_rate_limited",
            headers={"Retry-After": retry} if retry else {"Retry-After": "1"},
            retry_after_s=_seconds(retry),
        )
    if message is None:
        return GatewayError(
            502,
            f"provider {name!r} returned HTTP {status} with an unreadable body",
            error_class="upstream_invalid_response",
        )
    if 400 <= status < 500:
        return GatewayError(
            status if status in (400, 404, 413, 422) else 400,
            f"provider {name!r}: {message}",
            error_class="upstream_rejected",
        )
    return GatewayError(
        status if status in (500, 502, 503, 504, 529) else 502,
        f"provider {name!r} failed (HTTP {status}): {message}",
        error_class="upstream_error",
    )


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is rare from LLM APIs: ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 and seconds == seconds else None


def _json_object(raw: bytes, deployment: Deployment) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        preview = raw[:80].decode("utf-8", "replace")
        raise GatewayError(
            502,
            f"provider {deployment.provider.name!r} returned an invalid response "
            f"(not a JSON object): {preview!r}",
            error_class="upstream_invalid_response",
        )
    return data


async def relay_body(
    call: Call,
    api: Api,
    deployment: Deployment,
    response: aiohttp.ClientResponse,
    headers: dict[str, str],
) -> web.Response:
    """A non-streaming answer: relayed as is, or translated when the formats differ."""
    raw = await _read(response, deployment)
    if response.status >= 400:
        raise upstream_error(deployment, response.status, raw, response.headers)
    data = _json_object(raw, deployment)
    kind = deployment.provider.kind
    if call.operation == "embeddings":
        call.usage = openai_usage(data.get("usage"))
        call.served_model = data.get("model") or deployment.model
        if call.capture is not None:
            call.capture.body = raw
        return web.Response(body=raw, content_type="application/json", headers=headers)
    if kind == "openai":
        call.usage = openai_usage(data.get("usage"))
        choices = data.get("choices") or []
        call.output = [c.get("message") for c in choices if isinstance(c, dict)]
    else:
        call.usage = anthropic_usage(data.get("usage"))
        call.output = data.get("content")
    call.served_model = str(data.get("model") or deployment.model)
    if api == kind:
        body = raw
    elif api == "openai":
        body = orjson.dumps(anthropic_to_openai_response(data))
    else:
        body = orjson.dumps(openai_to_anthropic_response(data))
    if call.capture is not None:
        call.capture.body = body
    return web.Response(body=body, content_type="application/json", headers=headers)


class _Passthrough:
    """Same format in and out: observe each event and forward it unchanged."""

    def __init__(self, kind: str, *, drop_usage_chunk: bool) -> None:
        self.observer: OpenAIStreamObserver | AnthropicStreamObserver = (
            OpenAIStreamObserver() if kind == "openai" else AnthropicStreamObserver()
        )
        self.drop_usage_chunk = drop_usage_chunk

    @property
    def summary(self) -> StreamSummary:
        return self.observer.summary

    def feed(self, event: SseEvent) -> bytes:
        parsed = self.observer.observe(event)
        if (
            self.drop_usage_chunk
            and isinstance(parsed, dict)
            and parsed.get("usage")
            and not parsed.get("choices")
        ):
            return b""  # requested by the gateway for the span, not by the client
        return encode_event(event.data.encode(), event.event)

    def finish(self) -> bytes:
        return b""


# Whatever turns the provider's stream events into the client's.
_StreamRelay: TypeAlias = _Passthrough | AnthropicToOpenAIStream | OpenAIToAnthropicStream


def _stream_error_event(api: Api, message: str) -> bytes:
    if api == "anthropic":
        payload = {"type": "error", "error": {"type": "api_error", "message": message}}
        return encode_event(orjson.dumps(payload), "error")
    payload = {"error": {"message": message, "type": "api_error", "code": "upstream_interrupted"}}
    return encode_event(orjson.dumps(payload))


async def relay_stream(
    request: web.Request,
    call: Call,
    api: Api,
    deployment: Deployment,
    response: aiohttp.ClientResponse,
    headers: dict[str, str],
    *,
    client_wants_usage: bool,
) -> web.StreamResponse:
    """A streamed answer, forwarded event by event as it arrives."""
    await _require_event_stream(response, deployment)
    kind = deployment.provider.kind
    relay = _stream_relay(api, deployment, client_wants_usage=client_wants_usage)
    # Nothing goes to the client before the provider's first event: until then a failure
    # (timeout, reset, empty stream) is still retryable on another deployment.
    parser = SseParser()
    first = await _first_output(response, deployment, relay, parser)
    out = web.StreamResponse(headers=_stream_headers(headers))
    try:
        await out.prepare(request)
        try:
            call.mark_first_byte()
            await out.write(first)
            # One write per upstream read: the client sees each event as soon as the provider
            # sent it, without one syscall per event when several arrive together.
            async for chunk in response.content.iter_any():
                data = b"".join([relay.feed(event) for event in parser.feed(chunk)])
                if data:
                    call.mark_first_byte()
                    await out.write(data)
            data = b"".join([relay.feed(event) for event in parser.close()])
            if data:
                await out.write(data)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError):
                raise  # our client went away while we wrote: handled below
            _interrupted(call, deployment, type(exc).__name__)
        else:
            await _end_of_stream(call, deployment, relay, out)
        if call.error_class is not None and relay.summary.error is None:
            await out.write(_stream_error_event(api, call.error_message or "stream interrupted"))
        await out.write_eof()
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        call.fail(499, "client_disconnected", "the client disconnected mid-stream")
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        response.release()
        _finish_summary(call, relay.summary, kind)
    return out


async def _require_event_stream(response: aiohttp.ClientResponse, deployment: Deployment) -> None:
    """Raise the gateway's answer when the provider did not open an event stream."""
    if response.status >= 400:
        raw = await _read(response, deployment)
        raise upstream_error(deployment, response.status, raw, response.headers)
    if "text/event-stream" not in response.headers.get("Content-Type", ""):
        await _read(response, deployment)
        raise GatewayError(
            502,
            f"provider {deployment.provider.name!r} answered a streaming request "
            "without an event stream",
            error_class="upstream_invalid_response",
        )


def _stream_relay(api: Api, deployment: Deployment, *, client_wants_usage: bool) -> _StreamRelay:
    """What turns the provider's events into the client's: passed through or translated."""
    kind = deployment.provider.kind
    if api == kind:
        return _Passthrough(kind, drop_usage_chunk=kind == "openai" and not client_wants_usage)
    if api == "openai":
        return AnthropicToOpenAIStream(include_usage=client_wants_usage)
    return OpenAIToAnthropicStream(deployment.model)


def _stream_headers(headers: dict[str, str]) -> dict[str, str]:
    return {
        **headers,
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }


async def _end_of_stream(
    call: Call, deployment: Deployment, relay: _StreamRelay, out: web.StreamResponse
) -> None:
    """The provider's stream ended: a failure if it carried an error or stopped short, else
    the relay's closing bytes go out and a complete stream is kept for capture."""
    summary = relay.summary
    if summary.error is not None:
        message = str(summary.error.get("message", "stream error"))
        call.fail(502, "upstream_stream_error", f"provider error mid-stream: {message}")
    elif not summary.done:
        _interrupted(call, deployment, "stream ended early")
    else:
        tail = relay.finish()
        if tail:
            await out.write(tail)
        if call.capture is not None:  # complete: the only stream worth keeping
            call.capture.summary = relay.summary
            call.capture.kind = deployment.provider.kind


async def _first_output(
    response: aiohttp.ClientResponse,
    deployment: Deployment,
    relay: _StreamRelay,
    parser: SseParser,
) -> bytes:
    """Read until the relay has bytes for the client; failures here are retryable errors."""
    name = deployment.provider.name
    try:
        while True:
            chunk = await response.content.readany()
            if not chunk:
                data = b"".join([relay.feed(event) for event in parser.close()])
                if data:
                    return data
                raise GatewayError(
                    502,
                    f"provider {name!r} ended its stream before the first event",
                    error_class="upstream_interrupted",
                )
            data = b"".join([relay.feed(event) for event in parser.feed(chunk)])
            if data:
                return data
    except TimeoutError as exc:
        response.release()
        raise GatewayError(
            504,
            f"provider {name!r} sent no stream event in time",
            error_class="upstream_timeout",
        ) from exc
    except aiohttp.ClientError as exc:
        response.release()
        raise GatewayError(
            502,
            f"provider {name!r} broke off its stream before the first event: {type(exc).__name__}",
            error_class="upstream_interrupted",
        ) from exc
    except (GatewayError, asyncio.CancelledError):
        response.release()
        raise


def _interrupted(call: Call, deployment: Deployment, reason: str) -> None:
    call.fail(
        502,
        "upstream_stream_interrupted",
        f"provider {deployment.provider.name!r} stream broke off before it finished ({reason})",
    )


def _finish_summary(call: Call, summary: StreamSummary, kind: str) -> None:
    call.output = [summary.message()]
    call.served_model = summary.model or call.served_model
    usage = summary.usage
    if usage.output_tokens is None:
        usage.output_tokens = estimate_tokens("".join(summary.text)) + sum(
            estimate_tokens(c["function"]["arguments"]) for c in summary.tool_calls.values()
        )
        usage.estimated = True
    if usage.input_tokens is None:
        usage.input_tokens = estimate_tokens(orjson.dumps(call.request_body).decode())
        usage.estimated = True
    call.usage = usage
    call.attributes[GATEWAY_STREAM_EVENTS] = summary.events
    _ = kind
