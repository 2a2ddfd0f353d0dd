"""Non-streaming responses between the OpenAI and Anthropic formats, and usage extraction."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bastion.providers.translate.requests import openai_tool_call

__all__ = [
    "Usage",
    "anthropic_to_openai_response",
    "anthropic_usage",
    "openai_to_anthropic_response",
    "openai_usage",
]

_ANTHROPIC_TO_OPENAI_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
_OPENAI_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


@dataclass(slots=True)
class Usage:
    """Token counts in the OpenTelemetry convention: ``input_tokens`` includes cached ones."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    estimated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def openai_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        cached_tokens=_int(details.get("cached_tokens")) if isinstance(details, dict) else None,
    )


def anthropic_usage(usage: Any) -> Usage:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; add them in."""
    if not isinstance(usage, dict):
        return Usage()
    base = _int(usage.get("input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    total = None if base is None else base + (read or 0) + (written or 0)
    return Usage(
        input_tokens=total,
        output_tokens=_int(usage.get("output_tokens")),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def anthropic_to_openai_response(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object from an Anthropic ``message``."""
    text: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            tool_calls.append(openai_tool_call(block))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    usage = anthropic_usage(message.get("usage"))
    return {
        "id": "chatcmpl-" + str(message.get("id", "")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": _ANTHROPIC_TO_OPENAI_STOP.get(
                    str(message.get("stop_reason")), "stop"
                ),
                "logprobs": None,
            }
        ],
        "usage": openai_usage_object(usage),
    }


def openai_usage_object(usage: Usage) -> dict[str, Any]:
    prompt = usage.input_tokens or 0
    completion = usage.output_tokens or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


def anthropic_usage_object(usage: Usage) -> dict[str, Any]:
    cached = usage.cached_tokens or 0
    written = usage.cache_write_tokens or 0
    return {
        "input_tokens": max(0, (usage.input_tokens or 0) - cached - written),
        "output_tokens": usage.output_tokens or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }


def openai_to_anthropic_response(completion: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic ``message`` from an OpenAI ``chat.completion`` (its first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] or {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {"_raw": function.get("arguments")}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": arguments,
            }
        )
    return {
        "id": "msg_" + str(completion.get("id", "")).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": content,
        "stop_reason": _OPENAI_TO_ANTHROPIC_STOP.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage_object(openai_usage(completion.get("usage"))),
    }


def openai_stop_reason(anthropic_reason: str | None) -> str:
    return _ANTHROPIC_TO_OPENAI_STOP.get(str(anthropic_reason), "stop")


def anthropic_stop_reason(openai_reason: str | None) -> str:
    return _OPENAI_TO_ANTHROPIC_STOP.get(str(openai_reason), "end_turn")
