"""The Anthropic side: ``POST /v1/messages`` (plain and streamed with Anthropic's named
events) and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

import asyncio
import uuid
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from bastion.providers.simulator.content import prompt_tokens
from bastion.providers.simulator.errors import api_error, json_response, unauthorized
from bastion.providers.simulator.faults import FINAL, PLAIN, TOKEN, Pacer, write_stream
from bastion.providers.simulator.plan import Choice, Plan, make_plan
from bastion.providers.simulator.state import SIMULATOR, Prepared, authorized, prepare

__all__ = ["count_message_tokens", "messages"]

_STOP = MappingProxyType(
    {
        "stop": "end_turn",
        "stop_sequence": "stop_sequence",
        "length": "max_tokens",
        "tool_calls": "tool_use",
    }
)


def validate_messages(body: dict[str, Any], *, need_max_tokens: bool = True) -> str | None:
    """Why an Anthropic messages request is invalid, or None."""
    max_tokens = body.get("max_tokens")
    if need_max_tokens and max_tokens is None:
        return "max_tokens: Field required"
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return f"max_tokens: must be an integer >= 1, got {max_tokens!r}"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required (a non-empty list)"
    if not all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages):
        return "messages: every message must be an object with role 'user' or 'assistant'"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: must be a string or a list of text blocks"
    for key, kind in (("tools", list), ("tool_choice", dict), ("stop_sequences", list)):
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            return f"{key}: invalid type {type(value).__name__}"
    if body.get("stream") not in (None, True, False):
        return "stream: must be a boolean"
    return None


def _content(choice: Choice) -> list[dict[str, Any]]:
    if choice.tool_calls:
        return [
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
            for call in choice.tool_calls
        ]
    return [{"type": "text", "text": choice.text}]


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _stream_events(plan: Plan, message_id: str) -> list[tuple[int, bytes]]:
    choice = plan.choices[0]
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(plan.input_tokens, 1),
    }
    events = [(PLAIN, _event("message_start", {"type": "message_start", "message": start}))]
    ping = (PLAIN, _event("ping", {"type": "ping"}))
    if choice.tool_calls:
        for index, call in enumerate(choice.tool_calls):
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            payload = {"type": "content_block_start", "index": index, "content_block": block}
            events.append((PLAIN, _event("content_block_start", payload)))
            if index == 0:
                events.append(ping)
            for piece in call.pieces:
                delta = {"type": "input_json_delta", "partial_json": piece}
                payload = {"type": "content_block_delta", "index": index, "delta": delta}
                events.append((TOKEN, _event("content_block_delta", payload)))
            stop = {"type": "content_block_stop", "index": index}
            events.append((PLAIN, _event("content_block_stop", stop)))
    else:
        block = {"type": "text", "text": ""}
        payload = {"type": "content_block_start", "index": 0, "content_block": block}
        events.append((PLAIN, _event("content_block_start", payload)))
        events.append(ping)
        # Deltas differ only by their text: fill it into a serialised template.
        text_delta = {"type": "text_delta", "text": "\0"}
        payload = {"type": "content_block_delta", "index": 0, "delta": text_delta}
        before, after = _event("content_block_delta", payload).split(b'"\\u0000"')
        events.extend((TOKEN, before + orjson.dumps(p) + after) for p in choice.pieces)
        stop = {"type": "content_block_stop", "index": 0}
        events.append((PLAIN, _event("content_block_stop", stop)))
    ending: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _STOP[choice.finish], "stop_sequence": choice.stop_sequence},
        "usage": {"output_tokens": choice.output_tokens},
    }
    events.append((FINAL, _event("message_delta", ending)))
    events.append((FINAL, _event("message_stop", {"type": "message_stop"})))
    return events


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    prepared = await prepare(request, "anthropic", "messages", validate_messages)
    if not isinstance(prepared, Prepared):
        return prepared
    body, config = prepared.body, prepared.config
    forced = request.headers.get("x-sim-tokens")
    plan = make_plan(
        body,
        prepared.name,
        config,
        "anthropic",
        forced_length=int(forced) if forced is not None else None,
    )
    tokens = prepared.state.stats.tokens
    tokens["input"] += plan.input_tokens
    tokens["output"] += plan.output_tokens
    message_id = "msg_" + uuid.uuid4().hex[:24]
    if body.get("stream") is True:
        return await write_stream(
            request,
            _stream_events(plan, message_id),
            pacer=Pacer(config.tokens_per_second),
            drop=prepared.fault == "drop",
        )
    if config.tokens_per_second > 0:
        await asyncio.sleep(plan.output_tokens / config.tokens_per_second)
    choice = plan.choices[0]
    payload = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": _content(choice),
        "stop_reason": _STOP[choice.finish],
        "stop_sequence": choice.stop_sequence,
        "usage": _usage(plan.input_tokens, choice.output_tokens),
    }
    return json_response(payload)


async def count_message_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: the input tokens ``/v1/messages`` would report."""
    state = request.app[SIMULATOR]
    state.stats.requests += 1
    state.stats.routes["messages.count_tokens"] += 1
    if not authorized(request, state.config):
        return unauthorized("anthropic")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return api_error("anthropic", 400, f"The request body is not valid JSON: {exc}")
    problem = (
        validate_messages(body, need_max_tokens=False)
        if isinstance(body, dict)
        else "The request body must be a JSON object."
    )
    if problem is not None:
        return api_error("anthropic", 400, problem)
    tokens = prompt_tokens(body["messages"], body.get("system"), body.get("tools"))
    return json_response({"input_tokens": tokens})
