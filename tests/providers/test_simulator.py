"""The provider simulator, driven over loopback by the real ``openai`` and ``anthropic`` SDKs."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
import typer
from typer.testing import CliRunner

from bastion.cli.simulate import simulate
from bastion.providers.simulator import (
    FAULTS,
    SimulatorConfig,
    SimulatorConfigError,
    SimulatorServer,
    parse_model,
)
from bastion.providers.simulator.faults import DROP_AFTER

USER = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "verbose": {"type": "boolean"},
    },
    "required": ["city", "days", "unit"],
}
OPENAI_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
ANTHROPIC_TOOLS: Any = [
    {"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA}
]


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(seed=7)) as server:
        yield server


@pytest.fixture
def oai(sim: SimulatorServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(sim: SimulatorServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


def openai_client(server: SimulatorServer, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "sk-test")
    return openai.OpenAI(base_url=server.url + "/v1", max_retries=0, **kwargs)


def ask(client: openai.OpenAI, content: str, model: str = "sim-small", **kwargs: Any) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )
    return response.choices[0].message.content or ""


def get_json(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def words(text: str) -> int:
    """Output tokens as the simulator counts them: one per space-separated piece."""
    return len(text.split(" "))


# --- OpenAI chat --------------------------------------------------------------------------


def test_chat_completion_shape_usage_and_snapshot_model(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(model="sim-small", messages=USER, temperature=0.2)
    assert response.object == "chat.completion"
    assert response.model == "sim-small-2026-01-01"  # served ≠ asked, like OpenAI snapshots
    [choice] = response.choices
    content = choice.message.content or ""
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert content.startswith("About What is the capital of France?:")
    assert response.usage is not None
    assert response.usage.completion_tokens == words(content)
    assert response.usage.prompt_tokens == math.ceil(len(USER[0]["content"]) / 4) + 3
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    other = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert other.model == "gpt-4o-mini"


def test_default_reply_length_is_in_the_configured_range(oai: openai.OpenAI) -> None:
    for i in range(20):
        response = oai.chat.completions.create(
            model="sim-small~quality=bad", messages=[{"role": "user", "content": f"q{i}"}]
        )
        assert response.usage is not None
        assert 20 <= response.usage.completion_tokens <= 60


def test_unknown_params_are_accepted(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "system", "content": "be brief"}, *USER],
        temperature=1.5,
        user="u-1",
        metadata={"k": "v"},
        extra_body={"frobnicate": True, "top_k": 3},
    )
    assert response.choices[0].message.content


def test_stream_with_usage_matches_the_plain_answer(oai: openai.OpenAI) -> None:
    plain = ask(oai, "Tell me about streams")
    stream = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "Tell me about streams"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == plain
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(pieces) == words(plain)
    assert all(c.model == "sim-small-2026-01-01" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_stream_without_usage_has_no_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="sim-small", messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)


def test_sse_wire_format_ends_with_done(sim: SimulatorServer) -> None:
    body = orjson.dumps({"model": "sim-small", "messages": USER, "stream": True})
    request = urllib.request.Request(
        sim.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])


def test_n_choices(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(model="sim-small", messages=USER, n=2)
    assert [c.index for c in response.choices] == [0, 1]
    texts = [c.message.content or "" for c in response.choices]
    assert all(t.startswith("About What is the capital") for t in texts)
    assert texts[0] != texts[1]
    assert texts[0] == ask(oai, USER[0]["content"])
    assert response.usage is not None
    assert response.usage.completion_tokens == sum(words(t) for t in texts)
    chunks = list(oai.chat.completions.create(model="sim-small", messages=USER, n=2, stream=True))
    streamed = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == texts


def test_max_tokens_caps_output_with_finish_reason_length(oai: openai.OpenAI) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        response = oai.chat.completions.create(model="sim-small", messages=USER, **{key: 5})
        content = response.choices[0].message.content or ""
        assert response.choices[0].finish_reason == "length"
        assert response.usage is not None
        assert response.usage.completion_tokens == 5 == words(content)
        assert ask(oai, USER[0]["content"]).startswith(content)


def test_stop_sequence_cuts_the_reply(oai: openai.OpenAI) -> None:
    content = ask(oai, "Reply with: one two three four", stop=[" three"])
    assert content == "one two"


# --- tools and structured output ------------------------------------------------------------


def check_weather_arguments(arguments: str, city: str) -> None:
    parsed = json.loads(arguments)
    assert parsed["city"] == city
    assert isinstance(parsed["days"], int)
    assert parsed["unit"] == "celsius"
    assert "verbose" not in parsed  # only required properties


def test_tool_call(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "Please call get_weather for Paris."}],
        tools=OPENAI_TOOLS,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.id.startswith("call_")
    check_weather_arguments(call.function.arguments, "Paris")


def test_no_tool_call_unless_asked_and_not_after_a_tool_result(oai: openai.OpenAI) -> None:
    plain = oai.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "weather?"}], tools=OPENAI_TOOLS
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].finish_reason == "stop"
    after_result = oai.chat.completions.create(
        model="sim-small",
        tools=OPENAI_TOOLS,
        messages=[
            {"role": "user", "content": "call get_weather for Oslo"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )
    assert after_result.choices[0].message.tool_calls is None
    assert after_result.choices[0].message.content


def test_tool_choice_forces_a_call(oai: openai.OpenAI) -> None:
    forced = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "what time is it in Rome"}],
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    calls = forced.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_weather"
    check_weather_arguments(calls[0].function.arguments, "Rome")
    required = oai.chat.completions.create(
        model="sim-small", messages=USER, tools=OPENAI_TOOLS, tool_choice="required"
    )
    assert required.choices[0].message.tool_calls is not None
    none = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        tools=OPENAI_TOOLS,
        tool_choice="none",
    )
    assert none.choices[0].message.tool_calls is None


def test_parallel_tool_calls(oai: openai.OpenAI) -> None:
    content = "call get_time and then call get_weather for Lima"
    response = oai.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": content}], tools=OPENAI_TOOLS
    )
    calls = response.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[0].function.arguments) == {}
    single = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": content}],
        tools=OPENAI_TOOLS,
        parallel_tool_calls=False,
    )
    assert len(single.choices[0].message.tool_calls or []) == 1


def test_streamed_tool_call_arrives_as_deltas(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        tools=OPENAI_TOOLS,
        stream=True,
    )
    name, call_id, fragments, finish = "", "", [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                call_id = call.id
            if call.function and call.function.name:
                name = call.function.name
            if call.function and call.function.arguments:
                fragments.append(call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert (name, finish) == ("get_weather", "tool_calls")
    assert call_id.startswith("call_")
    assert len(fragments) > 1
    check_weather_arguments("".join(fragments), "Paris")
    with oai.chat.completions.stream(
        model="sim-small",
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        tools=OPENAI_TOOLS,
    ) as helper:
        final = helper.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    check_weather_arguments(call.function.arguments, "Paris")


def test_json_object_response_format(oai: openai.OpenAI) -> None:
    content = ask(oai, "Give me JSON", response_format={"type": "json_object"})
    assert isinstance(json.loads(content)["answer"], str)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "Give me JSON"}],
            response_format={"type": "json_object"},
            stream=True,
        )
    )
    assert json.loads(streamed) == json.loads(content)


def test_json_schema_response_format_and_sdk_parse(oai: openai.OpenAI) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int
        capital: bool
        tags: list[str]

    class Answer(BaseModel):
        city: City
        note: str | None

    parsed = oai.chat.completions.parse(
        model="sim-small", messages=[{"role": "user", "content": "Reply with: Paris"}],
        response_format=Answer,
    )  # fmt: skip
    answer = parsed.choices[0].message.parsed
    assert answer is not None
    assert answer.city.name == "Paris"
    assert answer.city.capital is True
    schema = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    content = ask(
        oai,
        "numbers",
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    assert isinstance(json.loads(content)["x"], float)


# --- embeddings and models ----------------------------------------------------------------


def test_embeddings_base64_default_and_float_agree(oai: openai.OpenAI) -> None:
    default = oai.embeddings.create(model="sim-embed", input=["hello", "world", "hello"])
    assert default.model == "sim-embed"
    vectors = [d.embedding for d in default.data]
    assert [len(v) for v in vectors] == [256] * 3
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    floats = oai.embeddings.create(model="sim-embed", input="hello", encoding_format="float")
    assert floats.data[0].embedding == vectors[0]
    assert default.usage.prompt_tokens == 2 + 2 + 2


def test_embeddings_dimensions_token_arrays_and_raw_base64(
    oai: openai.OpenAI, sim: SimulatorServer
) -> None:
    short = oai.embeddings.create(model="sim-embed", input="hello", dimensions=32)
    assert len(short.data[0].embedding) == 32
    tokens = oai.embeddings.create(model="sim-embed", input=[[1, 2, 3], [1, 2, 3]])
    assert tokens.data[0].embedding == tokens.data[1].embedding
    body = orjson.dumps(
        {"model": "m", "input": "hello", "encoding_format": "base64", "dimensions": 32}
    )
    request = urllib.request.Request(
        sim.url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        encoded = orjson.loads(response.read())["data"][0]["embedding"]
    decoded = list(struct.unpack("<32f", base64.b64decode(encoded)))
    assert decoded == short.data[0].embedding


def test_models_list_in_both_shapes(
    oai: openai.OpenAI, claude: anthropic.Anthropic, sim: SimulatorServer
) -> None:
    assert [m.id for m in oai.models.list()] == ["sim-small", "sim-large"]
    page = claude.models.list()
    assert [m.id for m in page.data] == ["sim-small", "sim-large"]
    assert page.data[0].type == "model"
    assert page.data[0].display_name == "sim-small"
    raw = get_json(sim.url + "/v1/models")
    assert raw["object"] == "list"
    assert oai.models.retrieve("anything").id == "anything"
    with SimulatorServer(SimulatorConfig(models=("sim-small", "gpt-4o"))) as extra:
        assert [m["id"] for m in get_json(extra.url + "/v1/models")["data"]] == [
            "sim-small",
            "sim-large",
            "gpt-4o",
        ]


# --- Anthropic ----------------------------------------------------------------------------


def test_anthropic_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="sim-large",
        max_tokens=200,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": "Summarise the quarterly report please"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "sim-large-2026-01-01"
    assert message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text"
    assert block.text.startswith("About Summarise the quarterly report please:")
    assert message.usage.output_tokens == words(block.text)
    expected_input = math.ceil(len("You are terse.") / 4) + 3 + math.ceil(37 / 4) + 3
    assert message.usage.input_tokens == expected_input
    with_string_system = claude.messages.create(
        model="sim-large",
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": "Summarise the quarterly report please"}],
    )
    assert with_string_system.content == message.content


def test_anthropic_max_tokens_truncates(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="sim-large", max_tokens=3, messages=USER)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_anthropic_stop_sequences(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="sim-large",
        max_tokens=50,
        stop_sequences=["END"],
        messages=[{"role": "user", "content": "Reply with: alpha beta END gamma"}],
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "END"
    assert message.content[0].type == "text"
    assert message.content[0].text == "alpha beta "


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    plain = claude.messages.create(model="sim-large", max_tokens=200, messages=USER)
    with claude.messages.stream(model="sim-large", max_tokens=200, messages=USER) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].type == plain.content[0].type == "text"
    assert final.content[0].text == plain.content[0].text
    assert len(final.content) == len(plain.content) == 1
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"
    assert final.id.startswith("msg_")
    for name in ("message_start", "content_block_start", "content_block_stop", "message_stop"):
        assert name in kinds
    with claude.messages.stream(model="sim-large", max_tokens=200, messages=USER) as stream:
        text = "".join(stream.text_stream)
    assert plain.content[0].type == "text"
    assert text == plain.content[0].text


def test_anthropic_raw_event_order(claude: anthropic.Anthropic) -> None:
    events = list(
        claude.messages.create(model="sim-large", max_tokens=5, messages=USER, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"] or kinds[:2] == [
        "message_start",
        "content_block_start",
    ]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 5
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == 5


def test_anthropic_raw_sse_names(sim: SimulatorServer) -> None:
    body = orjson.dumps({"model": "sim-large", "max_tokens": 4, "messages": USER, "stream": True})
    request = urllib.request.Request(
        sim.url + "/v1/messages",
        data=body,
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read().decode()
    names = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "call get_weather for Berlin"}]
    message = claude.messages.create(
        model="sim-large", max_tokens=200, tools=ANTHROPIC_TOOLS, messages=messages
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.id.startswith("toolu_")
    check_weather_arguments(json.dumps(block.input), "Berlin")
    with claude.messages.stream(
        model="sim-large", max_tokens=200, tools=ANTHROPIC_TOOLS, messages=messages
    ) as stream:
        partials = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(partials) > 1
    [streamed] = final.content
    assert streamed.type == "tool_use"
    assert streamed.input == block.input
    # The tool result comes back: now a text answer.
    follow_up = claude.messages.create(
        model="sim-large",
        max_tokens=200,
        tools=ANTHROPIC_TOOLS,
        messages=[
            *messages,
            {"role": "assistant", "content": [block.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "9C"}],
            },
        ],
    )
    assert follow_up.stop_reason == "end_turn"
    forced = claude.messages.create(
        model="sim-large",
        max_tokens=200,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
        messages=USER,
    )
    assert forced.content[0].type == "tool_use"


def test_anthropic_missing_max_tokens_is_400(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="sim-large",
            max_tokens=anthropic.omit,  # type: ignore[arg-type]
            messages=USER,
            timeout=10,
        )
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


def test_anthropic_count_tokens(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="sim-large", messages=USER)
    message = claude.messages.create(model="sim-large", max_tokens=10, messages=USER)
    assert counted.input_tokens == message.usage.input_tokens


# --- async clients --------------------------------------------------------------------------


def test_async_clients(sim: SimulatorServer) -> None:
    async def run() -> tuple[str, str, str, str]:
        async with (
            openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="k", max_retries=0) as oai,
            anthropic.AsyncAnthropic(base_url=sim.url, api_key="k", max_retries=0) as claude,
        ):
            plain = await oai.chat.completions.create(model="sim-small", messages=USER)
            stream = await oai.chat.completions.create(
                model="sim-small", messages=USER, stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
            message = await claude.messages.create(model="sim-large", max_tokens=99, messages=USER)
            async with claude.messages.stream(
                model="sim-large", max_tokens=99, messages=USER
            ) as events:
                text = "".join([t async for t in events.text_stream])
            assert message.content[0].type == "text"
            return plain.choices[0].message.content or "", streamed, message.content[0].text, text

    plain, streamed, message, text = asyncio.run(run())
    assert plain == streamed
    assert message == text
    assert plain.startswith("About")


def test_async_concurrency(sim: SimulatorServer) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=sim.url + "/v1", api_key="k", max_retries=0
        ) as client:
            replies = await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model="sim-small", messages=[{"role": "user", "content": f"Echo: {i}"}]
                    )
                    for i in range(50)
                ]
            )
        return [r.choices[0].message.content or "" for r in replies]

    assert asyncio.run(run()) == [str(i) for i in range(50)]


# --- determinism and quality --------------------------------------------------------------


def test_content_is_deterministic_per_seed() -> None:
    def answers(seed: int) -> list[str]:
        with SimulatorServer(SimulatorConfig(seed=seed)) as server, openai_client(server) as c:
            return [ask(c, "Tell me a story"), ask(c, "Tell me a story", model="sim-large")]

    first, again, other = answers(1), answers(1), answers(2)
    assert first == again
    assert first[0] != other[0]
    assert first[0] != first[1]  # the model is part of the key


def test_reply_with_directive_good_and_bad(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    prompt = "Answer the question.\nREPLY WITH: The answer is 42\nThanks"
    assert ask(oai, prompt) == "The answer is 42"
    bad = ask(oai, prompt, model="sim-small~quality=bad")
    assert bad != "The answer is 42"
    assert bad == ask(oai, prompt, model="sim-small~quality=bad")
    assert ask(oai, "reply with: Paris", model="sim-large~quality=bad") != "Paris"
    message = claude.messages.create(
        model="sim-large",
        max_tokens=50,
        system="Reply with: yes",
        messages=[{"role": "user", "content": "Is the sky blue?"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "yes"


def test_echo_directive_and_topic(oai: openai.OpenAI) -> None:
    assert ask(oai, "Please repeat.\nEcho: hello there, world\nbye") == "hello there, world"
    assert ask(oai, "Echo: hello", model="sim-small~quality=bad") != "hello"
    good = ask(oai, "Explain how vaccines train the immune system to fight disease")
    bad = ask(oai, "Explain how vaccines train the immune system to fight disease", "x~quality=bad")
    assert good.startswith("About Explain how vaccines train the immune system to:")
    assert "vaccines" not in bad


def test_forced_reply_length(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="sim-small~quality=bad", messages=USER, extra_headers={"x-sim-tokens": "100"}
    )
    assert response.usage is not None
    assert (
        response.usage.completion_tokens == 100 == words(response.choices[0].message.content or "")
    )


# --- faults -------------------------------------------------------------------------------


def test_forced_429_with_retry_after(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(oai, "hi", extra_headers={"x-sim-fault": "429"})
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["retry-after-ms"] == "1000"
    assert caught.value.body is not None
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(
            model="sim-large", max_tokens=5, messages=USER, extra_headers={"x-sim-fault": "429"}
        )
    assert limited.value.response.json()["type"] == "error"
    assert limited.value.response.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("fault", ["500", "503"])
def test_forced_server_errors(fault: str, oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(oai, "hi", extra_headers={"x-sim-fault": fault})
    assert caught.value.status_code == int(fault)
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="sim-large", max_tokens=5, messages=USER, extra_headers={"x-sim-fault": fault}
        )


def test_reset_is_a_connection_error(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.APIConnectionError):
        ask(oai, "hi", extra_headers={"x-sim-fault": "reset"})
    with pytest.raises(anthropic.APIConnectionError):
        claude.messages.create(
            model="sim-large", max_tokens=5, messages=USER, extra_headers={"x-sim-fault": "reset"}
        )
    assert ask(oai, "Echo: still serving") == "still serving"


def test_drop_breaks_the_stream_off(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    stream = oai.chat.completions.create(
        model="sim-small",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-fault": "drop"},
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)
    content = [c for c in received if c.choices and c.choices[0].delta.content]
    assert 1 <= len(content) <= DROP_AFTER
    assert all(c.usage is None for c in received)
    assert all(c.choices[0].finish_reason is None for c in received)
    kinds: list[str] = []
    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)),
        claude.messages.stream(
            model="sim-large",
            max_tokens=100,
            messages=USER,
            extra_headers={"x-sim-fault": "drop"},
        ) as events,
    ):
        kinds.extend(e.type for e in events)
    assert "message_start" in kinds
    assert "message_stop" not in kinds
    with pytest.raises(openai.APIConnectionError):  # no stream: a plain reset
        ask(oai, "hi", extra_headers={"x-sim-fault": "drop"})


def test_garbage_is_an_sdk_error(oai: openai.OpenAI) -> None:
    with pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)):
        ask(oai, "hi", extra_headers={"x-sim-fault": "garbage"})
    stream = oai.chat.completions.create(
        model="sim-small", messages=USER, stream=True, extra_headers={"x-sim-fault": "garbage"}
    )
    with pytest.raises((json.JSONDecodeError, openai.APIError)):
        list(stream)


def test_timeout_fault_and_prompt_shutdown() -> None:
    server = SimulatorServer(SimulatorConfig()).start()
    try:
        with openai_client(server, timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                ask(client, "hi", extra_headers={"x-sim-fault": "timeout"})
            assert time.monotonic() - started < 3
        # A request still hanging when the server stops does not hold it up.
        errors: list[BaseException] = []

        def hang() -> None:
            with openai_client(server, timeout=20) as slow:
                try:
                    ask(slow, "hi", extra_headers={"x-sim-fault": "timeout"})
                except openai.APIError as exc:
                    errors.append(exc)

        thread = threading.Thread(target=hang)
        thread.start()
        time.sleep(0.3)
    finally:
        started = time.monotonic()
        server.stop()
        stopped = time.monotonic() - started
    thread.join(10)
    assert stopped < 3
    assert not server.running
    assert len(errors) == 1


def test_timeout_fault_answers_504_after_timeout_s() -> None:
    config = SimulatorConfig(timeout_s=0.2, error_rate=1.0, faults=("timeout",))
    with SimulatorServer(config) as server, openai_client(server) as client:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            ask(client, "hi")
        assert caught.value.status_code == 504
        assert 0.15 <= time.monotonic() - started < 3


def test_error_rate_one_always_fails() -> None:
    config = SimulatorConfig(error_rate=1.0, faults=("503",))
    with SimulatorServer(config) as server, openai_client(server) as client:
        for _ in range(10):
            with pytest.raises(openai.InternalServerError) as caught:
                ask(client, "hi")
            assert caught.value.status_code == 503
        assert get_json(server.url + "/_sim/stats")["faults"] == {"503": 10}


def test_error_rate_is_seeded() -> None:
    def failures() -> int:
        config = SimulatorConfig(seed=1, error_rate=0.3)
        count = 0
        with SimulatorServer(config) as server, openai_client(server) as client:
            for _ in range(200):
                try:
                    ask(client, "hi")
                except openai.APIStatusError as exc:
                    statuses.add(exc.status_code)
                    count += 1
        return count

    statuses: set[int] = set()

    first = failures()
    assert 30 <= first <= 90
    assert failures() == first
    assert statuses == {429, 500, 503}


def test_model_variant_options(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        ask(oai, "hi", model="sim-small~error_rate=1~faults=500")
    with pytest.raises(openai.RateLimitError):
        ask(oai, "hi", model="sim-small~errors=1~faults=429")
    assert ask(oai, "Echo: ok", model="sim-small~latency_ms=1~tps=10000") == "ok"
    with pytest.raises(openai.BadRequestError) as caught:
        ask(oai, "hi", model="sim-small~bogus=1")
    assert "bogus" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        ask(oai, "hi", model="sim-small~faults=explode~error_rate=1")
    with pytest.raises(openai.BadRequestError):
        ask(oai, "hi", extra_headers={"x-sim-fault": "explode"})


# --- latency and pacing -------------------------------------------------------------------


def test_stream_pacing_and_latency() -> None:
    with (
        SimulatorServer(SimulatorConfig(tokens_per_second=200)) as server,
        openai_client(server) as client,
    ):
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="sim-small", messages=USER, stream=True, extra_headers={"x-sim-tokens": "40"}
        )
        pieces = [c.choices[0].delta.content for c in stream if c.choices[0].delta.content]
        assert len(pieces) == 40
        assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        ask(client, "x", extra_headers={"x-sim-tokens": "40"})  # not streamed: all at once
        assert time.monotonic() - started >= 0.15
    with (
        SimulatorServer(SimulatorConfig(latency_ms=100)) as server,
        openai_client(server) as client,
    ):
        started = time.monotonic()
        stream = client.chat.completions.create(model="sim-small", messages=USER, stream=True)
        first = next(iter(stream))
        assert first.choices
        assert time.monotonic() - started >= 0.09
        stream.close()
        started = time.monotonic()
        ask(client, "x", extra_headers={"x-sim-latency-ms": "400"})  # per-request override
        assert time.monotonic() - started >= 0.39


def test_latency_jitter_varies_but_is_seeded() -> None:
    def timings() -> list[float]:
        config = SimulatorConfig(seed=3, latency_ms=30, latency_jitter=0.8)
        out = []
        with SimulatorServer(config) as server, openai_client(server) as client:
            for _ in range(8):
                started = time.monotonic()
                ask(client, "x")
                out.append(time.monotonic() - started)
        return out

    spread = timings()
    assert max(spread) - min(spread) > 0.005


# --- control routes, auth, config ---------------------------------------------------------


def test_stats_and_reset(sim: SimulatorServer, oai: openai.OpenAI) -> None:
    assert get_json(sim.url + "/_sim/reset", "POST")["requests"] == 0
    response = oai.chat.completions.create(model="sim-small", messages=USER)
    oai.chat.completions.create(model="sim-small~quality=bad", messages=USER)
    with pytest.raises(openai.RateLimitError):
        ask(oai, "hi", extra_headers={"x-sim-fault": "429"})
    oai.embeddings.create(model="sim-embed", input="x")
    oai.models.list()
    stats = get_json(sim.url + "/_sim/stats")
    assert stats["requests"] == 5
    assert stats["routes"] == {"chat.completions": 3, "embeddings": 1, "models": 1}
    assert stats["models"] == {"sim-small": 2, "sim-small~quality=bad": 1, "sim-embed": 1}
    assert stats["faults"] == {"429": 1}
    assert response.usage is not None
    assert stats["tokens"]["output"] >= response.usage.completion_tokens
    assert get_json(sim.url + "/_sim/reset", "POST")["routes"] == {}
    assert get_json(sim.url + "/_sim/stats")["requests"] == 0
    assert get_json(sim.url + "/healthz") == {"status": "ok"}


def test_unknown_route_and_bad_bodies(sim: SimulatorServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        get_json(sim.url + "/v1/nope")
    assert caught.value.code == 404
    assert "error" in orjson.loads(caught.value.read())
    caught.value.close()
    for body, api in ((b"{not json", "chat/completions"), (b'{"model": "m"}', "messages")):
        request = urllib.request.Request(sim.url + f"/v1/{api}", data=body)
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(request, timeout=10)
        assert bad.value.code == 400
        bad.value.close()


def test_api_key_is_enforced_when_configured() -> None:
    with SimulatorServer(SimulatorConfig(api_key="sekret")) as server:
        with openai_client(server, api_key="wrong") as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                ask(client, "hi")
            assert caught.value.response.json()["error"]["code"] == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
        with openai_client(server, api_key="sekret") as client:
            assert ask(client, "Echo: in") == "in"
        with anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0) as claude:
            with pytest.raises(anthropic.AuthenticationError) as denied:
                claude.messages.create(model="sim-large", max_tokens=5, messages=USER)
            assert denied.value.response.json()["error"]["type"] == "authentication_error"
        with anthropic.Anthropic(base_url=server.url, api_key="sekret", max_retries=0) as claude:
            assert claude.messages.create(model="sim-large", max_tokens=5, messages=USER).content


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": -0.1}, "error_rate"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": math.nan}, "latency_ms"),
        ({"latency_jitter": -1}, "latency_jitter"),
        ({"tokens_per_second": -5}, "tokens_per_second"),
        ({"faults": ("500", "boom")}, "faults"),
        ({"faults": ()}, "faults"),
        ({"faults": "500"}, "faults"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"min_tokens": 0}, "min_tokens"),
        ({"min_tokens": 10, "max_tokens": 5}, "max_tokens"),
        ({"quality": "meh"}, "quality"),
        ({"seed": "1"}, "seed"),
        ({"api_key": ""}, "api_key"),
    ],
)
def test_config_validation(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        SimulatorConfig(**changes)
    assert isinstance(caught.value, SimulatorConfigError)
    assert caught.value.field == field


def test_config_defaults_and_parse_model() -> None:
    config = SimulatorConfig(faults=["429"])  # type: ignore[arg-type]
    assert config.faults == ("429",)
    assert sorted(FAULTS) == ["429", "500", "503", "drop", "garbage", "reset", "timeout"]
    name, variant = parse_model("sim-small~tps=50~faults=500,429~quality=bad", SimulatorConfig())
    assert name == "sim-small"
    assert variant.tokens_per_second == 50
    assert variant.faults == ("500", "429")
    assert variant.quality == "bad"
    assert parse_model("plain", config) == ("plain", config)
    with pytest.raises(ValueError, match="error_rate"):
        parse_model("sim-small~error_rate=abc", config)
    with pytest.raises(ValueError, match="api_key"):
        parse_model("sim-small~api_key=x", config)


# --- CLI ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_until_terminated() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import typer; from bastion.cli.simulate import simulate; typer.run(simulate)",
            "--port",
            str(port),
            "--seed",
            "3",
            "--faults",
            "429",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert get_json(f"http://127.0.0.1:{port}/healthz") == {"status": "ok"}
                break
            except OSError:
                assert process.poll() is None, "the simulator exited"
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}" in output.decode()


def test_cli_rejects_bad_options() -> None:
    app = typer.Typer()
    app.command()(simulate)
    runner = CliRunner()
    result = runner.invoke(app, ["--error-rate", "2"])
    assert result.exit_code == 2
    assert "--error-rate" in result.output
    result = runner.invoke(app, ["--faults", "500,boom"])
    assert result.exit_code == 2
    assert "--faults" in result.output
    assert "boom" in result.output
