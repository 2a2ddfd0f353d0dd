"""The official ``anthropic`` SDK (sync, async, streaming) against a real gateway process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import pytest

from tests.gateway.conftest import Gateway

TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


_OPENED: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close the test's SDK clients: a pooled socket left to the garbage collector would be
    reported as unraisable in whichever later test happens to collect it."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def client(gateway: Gateway, *, bearer: bool = False) -> anthropic.Anthropic:
    if bearer:
        sdk = anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.key, max_retries=0)
    else:
        sdk = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    _OPENED.append(sdk)
    return sdk


def test_messages_native_deployment_with_x_api_key_and_bearer(gateway: Gateway) -> None:
    for sdk in (client(gateway), client(gateway, bearer=True)):
        raw = sdk.messages.with_raw_response.create(
            model="claude",
            max_tokens=100,
            system="be brief",
            messages=[{"role": "user", "content": "Reply with: bonjour"}],
            extra_headers={"x-bastion-session": "s-1"},
        )
        message = raw.parse()
        assert message.content[0].type == "text"
        assert message.content[0].text == "bonjour"
        assert message.usage.output_tokens > 0
        span = gateway.span(raw.headers["x-bastion-trace-id"])
        assert span["provider"] == "sim-anthropic"
        assert span["request_model"] == "claude"
        assert span["session_id"] == "s-1"
        assert span["input_tokens"] == message.usage.input_tokens
        assert span["attributes"]["bastion.gateway.api"] == "anthropic"


def test_messages_stream_native(gateway: Gateway) -> None:
    with client(gateway).messages.stream(
        model="claude", max_tokens=100, messages=[{"role": "user", "content": "Reply with: a b c"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "a b c"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_anthropic_client_on_an_openai_deployment(gateway: Gateway) -> None:
    sdk = client(gateway)
    message = sdk.messages.create(
        model="chat",
        max_tokens=100,
        system="terse",
        messages=[{"role": "user", "content": "Reply with: crossed over"}],
    )
    assert message.content[0].text == "crossed over"  # type: ignore[union-attr]
    assert message.usage.input_tokens > 0
    with sdk.messages.stream(
        model="chat", max_tokens=100, messages=[{"role": "user", "content": "Reply with: x y z"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "x y z"
    assert final.usage.output_tokens > 0
    assert final.stop_reason == "end_turn"


def test_tool_use_both_deployment_kinds(gateway: Gateway) -> None:
    sdk = client(gateway)
    for model in ("claude", "chat"):
        message = sdk.messages.create(
            model=model,
            max_tokens=200,
            tools=[TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "call get_weather for Rome"}],
        )
        uses = [b for b in message.content if b.type == "tool_use"]
        assert uses, (model, message)
        assert uses[0].name == "get_weather"
        assert message.stop_reason == "tool_use"
        with sdk.messages.stream(
            model=model,
            max_tokens=200,
            tools=[TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "call get_weather for Rome"}],
        ) as stream:
            final = stream.get_final_message()
        streamed = [b for b in final.content if b.type == "tool_use"]
        assert streamed
        assert "city" in streamed[0].input


def test_async_client(gateway: Gateway) -> None:
    async def run() -> list[str]:
        sdk = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
        async with sdk:
            messages = await asyncio.gather(
                *(
                    sdk.messages.create(
                        model=model,
                        max_tokens=50,
                        messages=[{"role": "user", "content": f"Reply with: m{i}"}],
                    )
                    for i, model in enumerate(["claude", "chat"] * 5)
                )
            )
        return [m.content[0].text for m in messages]  # type: ignore[union-attr]

    assert asyncio.run(run()) == [f"m{i}" for i in range(10)]


def test_models_in_anthropic_shape(gateway: Gateway) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"chat", "claude"} <= ids


def test_errors_come_back_as_anthropic_exceptions(gateway: Gateway) -> None:
    sdk = client(gateway)
    with pytest.raises(anthropic.NotFoundError, match="nope"):
        sdk.messages.create(
            model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError, match="role"):
        sdk.messages.create(
            model="claude",
            max_tokens=10,
            messages=[{"role": "system", "content": "x"}],  # type: ignore[list-item]
        )
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        sdk.post(
            "/v1/messages",
            body={"model": "claude", "messages": [{"role": "user", "content": "x"}]},
            cast_to=object,
        )
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="bst_not-a-key", max_retries=0)
    _OPENED.append(bad)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
