"""The official ``openai`` SDK (sync, async, streaming) against a real gateway process."""

from __future__ import annotations

import asyncio
import base64
import struct

import openai
import pytest

from tests.gateway.conftest import Gateway

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def test_chat_completion_is_relayed_and_traced(gateway: Gateway) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "Reply with: forty-two"}],
        user="user-9",
        extra_headers={"x-bastion-feature": "answers", "x-request-id": "req-abc"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "forty-two"
    assert completion.model == "sim-small-2026-01-01"  # the model the provider served
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-request-id"] == "req-abc"
    trace_id = raw.headers["x-bastion-trace-id"]

    span = gateway.span(trace_id)
    assert span["operation"] == "chat"
    assert span["request_model"] == "chat"
    assert span["response_model"] == "sim-small-2026-01-01"
    assert span["provider"] == "sim"
    assert span["input_tokens"] == completion.usage.prompt_tokens
    assert span["output_tokens"] == completion.usage.completion_tokens
    assert span["cost_usd"] is not None
    assert span["cost_usd"] > 0
    assert span["user_id"] == "user-9"
    assert span["feature"] == "answers"
    assert span["attributes"]["bastion.request_id"] == "req-abc"
    assert "forty-two" in span["output"]
    assert "Reply with: forty-two" in span["input"]


def test_streaming_with_and_without_usage(gateway: Gateway) -> None:
    sdk = client(gateway)
    chunks = list(
        sdk.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "Reply with: streamed words here"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed words here"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0

    plain = list(
        sdk.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    # The gateway asks the provider for usage (for the span) but the client did not.
    assert all(c.usage is None for c in plain)
    assert all(c.choices for c in plain)


def test_streaming_span_has_ttft_and_usage(gateway: Gateway) -> None:
    with client(gateway).chat.completions.with_streaming_response.create(
        model="chat", messages=[{"role": "user", "content": "Reply with: hi"}], stream=True
    ) as response:
        trace_id = response.headers["x-bastion-trace-id"]
        assert "hi" in "".join(response.iter_lines())
    span = gateway.span(trace_id)
    assert span["ttft_ms"] is not None
    assert 0 < span["ttft_ms"] <= span["latency_ms"]
    assert span["output_tokens"] > 0
    assert span["attributes"]["bastion.gateway.stream"] is True


def test_async_client_concurrent_calls(gateway: Gateway) -> None:
    async def run() -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
        async with sdk:
            replies = await asyncio.gather(
                *(
                    sdk.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": f"Reply with: n{i}"}]
                    )
                    for i in range(20)
                )
            )
            stream = await sdk.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "Reply with: a b"}], stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        return [r.choices[0].message.content or "" for r in replies] + [streamed]

    results = asyncio.run(run())
    assert results == [f"n{i}" for i in range(20)] + ["a b"]


def test_tool_calls_non_streaming_and_streaming(gateway: Gateway) -> None:
    sdk = client(gateway)
    messages = [{"role": "user", "content": "Please call get_weather for Oslo"}]
    completion = sdk.chat.completions.create(model="chat", messages=messages, tools=TOOLS)
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert completion.choices[0].finish_reason == "tool_calls"

    with sdk.chat.completions.stream(model="chat", messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert streamed.function.name == "get_weather"
    assert "city" in streamed.function.arguments


def test_json_response_format(gateway: Gateway) -> None:
    completion = client(gateway).chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "give me json"}],
        response_format={"type": "json_object"},
    )
    import orjson

    assert isinstance(orjson.loads(completion.choices[0].message.content or ""), dict)


def test_embeddings_base64_by_default_and_float(gateway: Gateway) -> None:
    sdk = client(gateway)
    default = sdk.embeddings.create(model="embed", input=["alpha", "beta"])
    as_float = sdk.embeddings.create(model="embed", input="alpha", encoding_format="float")
    assert len(default.data) == 2
    assert default.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    assert default.usage.prompt_tokens > 0
    raw = sdk.embeddings.with_raw_response.create(
        model="embed", input="alpha", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(base64.b64decode(encoded)) // 4}f", base64.b64decode(encoded))
    assert list(decoded) == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    span = gateway.span(raw.headers["x-bastion-trace-id"])
    assert span["operation"] == "embeddings"
    assert span["output"] is None  # vectors are not stored


def test_models_lists_the_aliases(gateway: Gateway) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"chat", "claude", "embed"} <= ids


def test_openai_client_on_an_anthropic_deployment(gateway: Gateway) -> None:
    sdk = client(gateway)
    completion = sdk.chat.completions.create(
        model="claude",
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "Reply with: translated"},
        ],
    )
    assert completion.choices[0].message.content == "translated"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    chunks = list(
        sdk.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "Reply with: streamed across"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "streamed across"
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    tool = sdk.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        tools=TOOLS,
    )
    assert tool.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index]
    assert tool.choices[0].finish_reason == "tool_calls"
