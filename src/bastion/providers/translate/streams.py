"""Streaming: observe a stream for the span, and translate it between the two formats.

Observers read each event once (to collect text, tool calls, usage and the finish reason);
translators also emit the equivalent events of the other API, event by event, so nothing is
buffered beyond the event in hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bastion.providers.sse import SseEvent, encode_event
from bastion.providers.translate.responses import (
    Usage,
    anthropic_stop_reason,
    anthropic_usage,
    anthropic_usage_object,
    openai_stop_reason,
    openai_usage,
    openai_usage_object,
)

__all__ = [
    "AnthropicStreamObserver",
    "AnthropicToOpenAIStream",
    "OpenAIStreamObserver",
    "OpenAIToAnthropicStream",
    "StreamSummary",
]


@dataclass(slots=True)
class StreamSummary:
    """What a stream carried, for the span."""

    id: str | None = None
    model: str | None = None
    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: dict[str, Any] | None = None
    done: bool = False
    events: int = 0

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.tool_calls:
            out["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return out


def _loads(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class OpenAIStreamObserver:
    """Collects an OpenAI chat completion stream (``data: {chunk}`` … ``data: [DONE]``)."""

    def __init__(self) -> None:
        self.summary = StreamSummary()

    def observe(self, event: SseEvent) -> dict[str, Any] | None:
        """Record one event; returns the parsed chunk (None for ``[DONE]`` or junk)."""
        summary = self.summary
        summary.events += 1
        if event.data == "[DONE]":
            summary.done = True
            return None
        chunk = _loads(event.data)
        if not isinstance(chunk, dict):
            return None
        if "error" in chunk:
            summary.error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            return chunk
        summary.id = summary.id or chunk.get("id")
        summary.model = summary.model or chunk.get("model")
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                summary.text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                slot = summary.tool_calls.setdefault(
                    index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["function"]["name"] += function["name"]
                if function.get("arguments"):
                    slot["function"]["arguments"] += function["arguments"]
            if choice.get("finish_reason"):
                summary.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            summary.usage = openai_usage(chunk["usage"])
        return chunk


class AnthropicStreamObserver:
    """Collects an Anthropic Messages stream (named events)."""

    def __init__(self) -> None:
        self.summary = StreamSummary()
        self._blocks: dict[int, str] = {}
        self.tool_positions: dict[int, int] = {}
        self._usage: dict[str, Any] = {}

    def observe(self, event: SseEvent) -> dict[str, Any] | None:
        summary = self.summary
        summary.events += 1
        payload = _loads(event.data)
        if not isinstance(payload, dict):
            return None
        kind = payload.get("type") or event.event
        if kind == "message_start":
            message = payload.get("message") or {}
            summary.id = message.get("id")
            summary.model = message.get("model")
            self._usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            index = payload.get("index", 0)
            self._blocks[index] = block.get("type", "")
            if block.get("type") == "tool_use":
                position = len(summary.tool_calls)
                self.tool_positions[index] = position
                summary.tool_calls[position] = {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
            elif block.get("type") == "text" and block.get("text"):
                summary.text.append(block["text"])
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                summary.text.append(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                found = self.tool_positions.get(payload.get("index", 0))
                if found is not None:
                    call = summary.tool_calls[found]["function"]
                    call["arguments"] += delta.get("partial_json", "")
        elif kind == "message_delta":
            delta = payload.get("delta") or {}
            if delta.get("stop_reason"):
                summary.finish_reason = delta["stop_reason"]
            self._usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v})
        elif kind == "message_stop":
            summary.done = True
        elif kind == "error":
            summary.error = payload.get("error") or {}
        summary.usage = anthropic_usage(self._usage)
        return payload


class AnthropicToOpenAIStream:
    """Anthropic events in, OpenAI chat completion chunks out."""

    def __init__(self, *, include_usage: bool) -> None:
        self.observer = AnthropicStreamObserver()
        self.include_usage = include_usage
        self._created = int(time.time())
        self._finished = False

    @property
    def summary(self) -> StreamSummary:
        return self.observer.summary

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-" + (self.summary.id or ""),
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.summary.model or "",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return encode_event(orjson.dumps(chunk))

    def feed(self, event: SseEvent) -> bytes:
        payload = self.observer.observe(event)
        if payload is None:
            return b""
        kind = payload.get("type") or event.event
        if kind == "message_start":
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = self.observer.tool_positions[payload.get("index", 0)]
                call = {
                    "index": position,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta":
                position = self.observer.tool_positions.get(payload.get("index", 0), 0)
                call = {"index": position, "function": {"arguments": delta.get("partial_json", "")}}
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason")
            return self._chunk({}, openai_stop_reason(reason))
        if kind == "message_stop":
            return self.finish()
        if kind == "error":
            error = payload.get("error") or {}
            body = {"error": {"message": error.get("message", ""), "type": error.get("type")}}
            self._finished = True
            return encode_event(orjson.dumps(body))
        return b""

    def finish(self) -> bytes:
        """The stream's tail (usage chunk and ``[DONE]``), once."""
        if self._finished:
            return b""
        self._finished = True
        out = b""
        if self.include_usage:
            chunk = {
                "id": "chatcmpl-" + (self.summary.id or ""),
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.summary.model or "",
                "choices": [],
                "usage": openai_usage_object(self.summary.usage),
            }
            out += encode_event(orjson.dumps(chunk))
        return out + b"data: [DONE]\n\n"


class OpenAIToAnthropicStream:
    """OpenAI chat completion chunks in, Anthropic named events out."""

    def __init__(self, model: str) -> None:
        self.observer = OpenAIStreamObserver()
        self._model = model
        self._started = False
        self._open: tuple[str, int] | None = None  # ("text" | "tool", openai tool index)
        self._index = -1
        self._finished = False

    @property
    def summary(self) -> StreamSummary:
        return self.observer.summary

    @staticmethod
    def _event(name: str, payload: dict[str, Any]) -> bytes:
        return encode_event(orjson.dumps({"type": name, **payload}), name)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": "msg_" + (self.summary.id or "").removeprefix("chatcmpl-"),
            "type": "message",
            "role": "assistant",
            "model": self.summary.model or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return self._event("message_start", {"message": message}) + self._event("ping", {})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return self._event("content_block_stop", {"index": self._index})

    def _open_block(self, kind: str, key: int, block: dict[str, Any]) -> bytes:
        if self._open == (kind, key):
            return b""
        out = self._close_block()
        self._index += 1
        self._open = (kind, key)
        return out + self._event(
            "content_block_start", {"index": self._index, "content_block": block}
        )

    def feed(self, event: SseEvent) -> bytes:
        chunk = self.observer.observe(event)
        if chunk is None:
            return self.finish() if self.summary.done else b""
        if "error" in chunk:
            error = chunk.get("error") or {}
            self._finished = True
            return self._event(
                "error",
                {"error": {"type": "api_error", "message": str(error.get("message", error))}},
            )
        out = self._start()
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._open_block("text", 0, {"type": "text", "text": ""})
                out += self._event(
                    "content_block_delta",
                    {
                        "index": self._index,
                        "delta": {"type": "text_delta", "text": delta["content"]},
                    },
                )
            for call in delta.get("tool_calls") or []:
                key = call.get("index", 0)
                function = call.get("function") or {}
                slot = self.summary.tool_calls.get(key, {})
                out += self._open_block(
                    "tool",
                    key,
                    {
                        "type": "tool_use",
                        "id": slot.get("id", ""),
                        "name": (slot.get("function") or {}).get("name", ""),
                        "input": {},
                    },
                )
                if function.get("arguments"):
                    delta_json = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    out += self._event(
                        "content_block_delta", {"index": self._index, "delta": delta_json}
                    )
        return out

    def finish(self) -> bytes:
        """Close the open block and end the message, once."""
        if self._finished:
            return b""
        self._finished = True
        usage = self.summary.usage
        out = self._start() + self._close_block()
        usage_object = anthropic_usage_object(usage)
        out += self._event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": anthropic_stop_reason(self.summary.finish_reason),
                    "stop_sequence": None,
                },
                "usage": usage_object,
            },
        )
        return out + self._event("message_stop", {})
