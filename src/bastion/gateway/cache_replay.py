"""Cached answers in and out of streams.

An entry always holds the *non-streamed* answer in the client's API format, whichever way the
original request was made: a streamed answer is folded into one body when it completes
(:func:`body_from_stream`), and a streaming request that hits gets that body replayed as an
event stream in its API's format (:func:`openai_events`, :func:`anthropic_events`) — OpenAI
chunks ending with ``[DONE]`` (and the usage chunk when ``stream_options.include_usage`` asks
for it), Anthropic's named events from ``message_start`` to ``message_stop`` — which the
official SDKs parse like a provider's.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from bastion.providers.sse import encode_event
from bastion.providers.translate import StreamSummary, openai_to_anthropic_response
from bastion.providers.translate.responses import openai_stop_reason, openai_usage_object

__all__ = ["anthropic_events", "body_from_stream", "openai_events"]


def body_from_stream(api: str, kind: str, summary: StreamSummary, model: str | None) -> bytes:
    """The non-streamed body, in ``api``'s format, equivalent to a completed stream that a
    ``kind`` provider sent (the summary is in the provider's vocabulary)."""
    stream_id = summary.id or ""
    if kind == "anthropic":
        reason = openai_stop_reason(summary.finish_reason)
        stream_id = stream_id.removeprefix("msg_")
    else:
        reason = summary.finish_reason or "stop"
        stream_id = stream_id.removeprefix("chatcmpl-")
    completion: dict[str, Any] = {
        "id": "chatcmpl-" + stream_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": summary.model or model or "",
        "choices": [
            {"index": 0, "message": summary.message(), "finish_reason": reason, "logprobs": None}
        ],
        "usage": openai_usage_object(summary.usage),
    }
    if api == "anthropic":
        return orjson.dumps(openai_to_anthropic_response(completion))
    return orjson.dumps(completion)


def openai_events(completion: dict[str, Any], *, include_usage: bool) -> bytes:
    """A ``chat.completion`` as the chunk stream OpenAI would have sent for it."""
    base = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created") or int(time.time()),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    out: list[bytes] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(encode_event(orjson.dumps({**base, "choices": [choice]})))

    for position, choice in enumerate(completion.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        message = choice.get("message") or {}
        chunk(index, {"role": "assistant", "content": ""})
        if message.get("refusal"):
            chunk(index, {"refusal": message["refusal"]})
        if message.get("content"):
            chunk(index, {"content": message["content"]})
        for i, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            delta_call = {
                "index": i,
                "id": call.get("id", ""),
                "type": call.get("type", "function"),
                "function": {
                    "name": function.get("name", ""),
                    "arguments": function.get("arguments", ""),
                },
            }
            chunk(index, {"tool_calls": [delta_call]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage and isinstance(completion.get("usage"), dict):
        usage_chunk = {**base, "choices": [], "usage": completion["usage"]}
        out.append(encode_event(orjson.dumps(usage_chunk)))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": name, **payload}), name)


def anthropic_events(message: dict[str, Any]) -> bytes:
    """An Anthropic ``message`` as the named-event stream the Messages API would have sent."""
    usage = message.get("usage") or {}
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"}
    start_usage["output_tokens"] = 1  # what the API reports before any output
    head = {
        "id": message.get("id", ""),
        "type": "message",
        "role": message.get("role", "assistant"),
        "model": message.get("model", ""),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    out = [_event("message_start", {"message": head}), _event("ping", {})]
    for index, block in enumerate(message.get("content") or []):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            out.append(_start(index, {"type": "text", "text": ""}))
            out.append(_delta(index, {"type": "text_delta", "text": block.get("text", "")}))
        elif kind == "tool_use":
            empty = {"type": "tool_use", "id": block.get("id", ""), "name": block.get("name", "")}
            out.append(_start(index, {**empty, "input": {}}))
            partial = orjson.dumps(block.get("input") or {}).decode()
            out.append(_delta(index, {"type": "input_json_delta", "partial_json": partial}))
        elif kind == "thinking":
            out.append(_start(index, {"type": "thinking", "thinking": ""}))
            thinking = block.get("thinking", "")
            out.append(_delta(index, {"type": "thinking_delta", "thinking": thinking}))
            if block.get("signature"):
                signature = block["signature"]
                out.append(_delta(index, {"type": "signature_delta", "signature": signature}))
        else:  # sent whole at its start, as the API does for blocks without deltas
            out.append(_start(index, block))
        out.append(_event("content_block_stop", {"index": index}))
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    out.append(_event("message_delta", {"delta": delta, "usage": usage}))
    out.append(_event("message_stop", {}))
    return b"".join(out)


def _start(index: int, block: dict[str, Any]) -> bytes:
    return _event("content_block_start", {"index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event("content_block_delta", {"index": index, "delta": delta})
