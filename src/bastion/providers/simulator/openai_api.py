"""The OpenAI side: ``POST /v1/chat/completions`` (plain and streamed) and
``POST /v1/embeddings``."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from bastion.providers.simulator.content import count_tokens, embedding, encode_embedding
from bastion.providers.simulator.errors import json_response
from bastion.providers.simulator.faults import FINAL, PLAIN, TOKEN, Pacer, write_stream
from bastion.providers.simulator.plan import Choice, Plan, make_plan
from bastion.providers.simulator.state import Prepared, prepare

__all__ = ["chat_completions", "embeddings"]

_FINISH = MappingProxyType(
    {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls"}
)
_FINGERPRINT = "fp_bastion_sim"
_MAX_DIMENSIONS = 16384


def _positive_int(body: dict[str, Any], key: str, upper: int = 1 << 31) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        return f"{key}: must be an integer between 1 and {upper}, got {value!r}"
    return None


def validate_chat(body: dict[str, Any]) -> str | None:
    """Why an OpenAI chat request is invalid, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "messages: every message must be an object with a role"
    for key, kind in (
        ("tools", list),
        ("response_format", dict),
        ("stream_options", dict),
        ("tool_choice", str | dict),
    ):
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            return f"{key}: invalid type {type(value).__name__}"
    if body.get("stream") not in (None, True, False):
        return "stream: must be a boolean"
    return (
        _positive_int(body, "n", 128)
        or _positive_int(body, "max_tokens")
        or _positive_int(body, "max_completion_tokens")
    )


def _message(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in choice.tool_calls
        ]
    return message


def _usage(plan: Plan) -> dict[str, int]:
    output = plan.output_tokens
    return {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": output,
        "total_tokens": plan.input_tokens + output,
    }


def _stream_events(plan: Plan, body: dict[str, Any]) -> list[tuple[int, bytes]]:
    head: dict[str, Any] = {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": _FINGERPRINT,
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    events: list[tuple[int, bytes]] = []
    for index, choice in enumerate(plan.choices):
        if choice.tool_calls:
            events.append((PLAIN, chunk(index, {"role": "assistant", "content": None})))
            for position, call in enumerate(choice.tool_calls):
                start = {
                    "index": position,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                events.append((PLAIN, chunk(index, {"tool_calls": [start]})))
                for piece in call.pieces:
                    part = {"index": position, "function": {"arguments": piece}}
                    events.append((TOKEN, chunk(index, {"tool_calls": [part]})))
        else:
            events.append((PLAIN, chunk(index, {"role": "assistant", "content": ""})))
            # Content chunks differ only by their text: fill it into a serialised template.
            before, after = chunk(index, {"content": "\0"}).split(b'"\\u0000"')
            events.extend((TOKEN, before + orjson.dumps(p) + after) for p in choice.pieces)
        events.append((FINAL, chunk(index, {}, _FINISH[choice.finish])))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        tail = {**head, "choices": [], "usage": _usage(plan)}
        events.append((FINAL, b"data: " + orjson.dumps(tail) + b"\n\n"))
    events.append((FINAL, b"data: [DONE]\n\n"))
    return events


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    prepared = await prepare(request, "openai", "chat.completions", validate_chat)
    if not isinstance(prepared, Prepared):
        return prepared
    body, config = prepared.body, prepared.config
    forced = request.headers.get("x-sim-tokens")
    plan = make_plan(
        body,
        prepared.name,
        config,
        "openai",
        forced_length=int(forced) if forced is not None else None,
    )
    tokens = prepared.state.stats.tokens
    tokens["input"] += plan.input_tokens
    tokens["output"] += plan.output_tokens
    if body.get("stream") is True:
        return await write_stream(
            request,
            _stream_events(plan, body),
            pacer=Pacer(config.tokens_per_second),
            drop=prepared.fault == "drop",
        )
    if config.tokens_per_second > 0:
        await asyncio.sleep(plan.output_tokens / config.tokens_per_second)
    payload = {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": _FINGERPRINT,
        "choices": [
            {
                "index": index,
                "message": _message(choice),
                "logprobs": None,
                "finish_reason": _FINISH[choice.finish],
            }
            for index, choice in enumerate(plan.choices)
        ],
        "usage": _usage(plan),
    }
    return json_response(payload)


def validate_embeddings(body: dict[str, Any]) -> str | None:
    """Why an OpenAI embeddings request is invalid, or None."""
    raw = body.get("input")
    valid = isinstance(raw, str) or (
        isinstance(raw, list)
        and bool(raw)
        and (
            all(isinstance(x, str) for x in raw)
            or all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
            or all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw)
        )
    )
    if not valid:
        return "input: must be a string, an array of strings or an array of token arrays"
    if body.get("encoding_format") not in (None, "float", "base64"):
        return "encoding_format: must be 'float' or 'base64'"
    return _positive_int(body, "dimensions", _MAX_DIMENSIONS)


def _texts(raw: str | list[Any]) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw[0], int):  # one token array
        return [" ".join(map(str, raw))]
    return [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``: unit vectors determined by each input text."""
    prepared = await prepare(request, "openai", "embeddings", validate_embeddings)
    if not isinstance(prepared, Prepared):
        return prepared
    body = prepared.body
    texts = _texts(body["input"])
    dimensions = body.get("dimensions") or 256
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        vector, packed = embedding(text, dimensions)
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_embedding(packed) if as_base64 else vector,
            }
        )
    tokens = sum(count_tokens(t) for t in texts)
    prepared.state.stats.tokens["input"] += tokens
    payload = {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_response(payload)
