"""OpenAI ⇄ Anthropic translation: requests, responses and streams, event by event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bastion.providers.sse import SseEvent, SseParser, encode_event
from bastion.providers.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    TranslationError,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_openai_request_to_anthropic() -> None:
    body = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ],
        "temperature": 1.7,
        "max_completion_tokens": 99,
        "stop": "END",
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "user": "u-1",
        "stream": True,
    }
    out = openai_to_anthropic_request(body, "claude-x")
    assert out["model"] == "claude-x"
    assert out["system"] == "be brief"
    assert out["max_tokens"] == 99
    assert out["temperature"] == 1.0  # Anthropic's range ends at 1
    assert out["stop_sequences"] == ["END"]
    assert out["tool_choice"] == {"type": "any"}
    assert out["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    assert out["metadata"] == {"user_id": "u-1"}
    assert out["stream"] is True
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]  # tool result and next turn merged
    assert out["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert out["messages"][2]["content"][0]["type"] == "tool_result"
    assert out["messages"][2]["content"][1] == {"type": "text", "text": "thanks"}


def test_openai_features_anthropic_lacks_are_a_clear_error() -> None:
    with pytest.raises(TranslationError, match="n > 1") as caught:
        openai_to_anthropic_request({"messages": [], "n": 2}, "m")
    assert caught.value.param == "n"
    with pytest.raises(TranslationError, match="audio"):
        openai_to_anthropic_request(
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "m"
        )


def test_json_response_format_becomes_an_instruction() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    }
    out = openai_to_anthropic_request(body, "m")
    assert "valid JSON object" in out["system"]
    assert '{"type":"object"}' in out["system"]


def test_anthropic_request_to_openai() -> None:
    body = {
        "model": "alias",
        "system": [{"type": "text", "text": "sys"}],
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
            },
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "metadata": {"user_id": "u-2"},
        "stream": True,
    }
    out = anthropic_to_openai_request(body, "gpt-x")
    assert out["messages"][0] == {"role": "system", "content": "sys"}
    assert out["messages"][2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"a":1}',
    }
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "ok"}
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["user"] == "u-2"
    assert out["stream_options"] == {"include_usage": True}


def test_responses_both_ways_keep_text_tools_stop_reason_and_usage() -> None:
    message = {
        "id": "msg_1",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90},
    }
    completion = anthropic_to_openai_response(message)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert orjson.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Oslo"
    }
    assert completion["usage"]["prompt_tokens"] == 100  # OpenAI counts cached tokens in
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 90}

    back = openai_to_anthropic_response(completion)
    assert back["stop_reason"] == "tool_use"
    assert back["content"] == message["content"]
    assert back["usage"]["input_tokens"] == 10
    assert back["usage"]["cache_read_input_tokens"] == 90


def _events(raw: bytes) -> list[SseEvent]:
    parser = SseParser()
    return parser.feed(raw) + parser.close()


def test_sse_parser_handles_split_chunks_comments_and_crlf() -> None:
    parser = SseParser()
    raw = b': keep-alive\r\nevent: ping\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]\n\n'
    events: list[SseEvent] = []
    for i in range(len(raw)):
        events += parser.feed(raw[i : i + 1])
    assert [(e.event, e.data) for e in events] == [("ping", '{"a":\n1}'), (None, "[DONE]")]
    assert encode_event(b"x", "e") == b"event: e\ndata: x\n\n"


def anthropic_stream() -> list[SseEvent]:
    def ev(kind: str, **payload: Any) -> SseEvent:
        return SseEvent(kind, orjson.dumps({"type": kind, **payload}).decode())

    return [
        ev(
            "message_start", message={"id": "m1", "model": "claude-x", "usage": {"input_tokens": 7}}
        ),
        ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        ev("ping"),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
        ev("content_block_stop", index=0),
        ev(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        ),
        ev(
            "content_block_delta",
            index=1,
            delta={"type": "input_json_delta", "partial_json": '{"x"'},
        ),
        ev(
            "content_block_delta",
            index=1,
            delta={"type": "input_json_delta", "partial_json": ":1}"},
        ),
        ev("content_block_stop", index=1),
        ev("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 12}),
        ev("message_stop"),
    ]


def test_anthropic_stream_to_openai_chunks() -> None:
    stream = AnthropicToOpenAIStream(include_usage=True)
    out = b"".join(stream.feed(e) for e in anthropic_stream())
    events = _events(out)
    assert events[-1].data == "[DONE]"
    chunks = [orjson.loads(e.data) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello"
    arguments = "".join(
        call["function"].get("arguments", "")
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    )
    assert arguments == '{"x":1}'
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}
    assert stream.summary.done
    assert stream.summary.message()["tool_calls"][0]["function"]["arguments"] == '{"x":1}'


def openai_stream() -> list[SseEvent]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> SseEvent:
        body = {
            "id": "chatcmpl-9",
            "model": "gpt-x",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return SseEvent(None, orjson.dumps(body).decode())

    usage = {
        "id": "chatcmpl-9",
        "model": "gpt-x",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi "}),
        chunk({"content": "there"}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"y":2}'}}]}),
        chunk({}, "tool_calls"),
        SseEvent(None, orjson.dumps(usage).decode()),
        SseEvent(None, "[DONE]"),
    ]


def test_openai_stream_to_anthropic_events() -> None:
    stream = OpenAIToAnthropicStream("fallback-model")
    events = _events(b"".join(stream.feed(e) for e in openai_stream()))
    names = [e.event for e in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [orjson.loads(e.data) for e in events]
    assert payloads[0]["message"]["model"] == "gpt-x"
    assert payloads[6]["content_block"] == {
        "type": "tool_use",
        "id": "c1",
        "name": "f",
        "input": {},
    }
    assert payloads[7]["delta"] == {"type": "input_json_delta", "partial_json": '{"y":2}'}
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"
    assert payloads[-2]["usage"]["output_tokens"] == 3
    assert stream.finish() == b""  # already finished at [DONE]
