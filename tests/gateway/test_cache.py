"""The response cache end to end: a real simulator and a real gateway process on loopback,
driven with the official OpenAI and Anthropic SDKs and plain HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.gateway.conftest import Gateway, running_gateway

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
  sim-anthropic: {{type: anthropic, base_url: "{sim}"}}
prices:
  sim-small: {{input_usd_per_mtok: 1000, output_usd_per_mtok: 2000}}
  sim-large: {{input_usd_per_mtok: 3000, output_usd_per_mtok: 6000}}
models:
  chat: {{deployments: [{{provider: sim, model: "sim-small~seed=21"}}]}}
  claude: {{deployments: [{{provider: sim-anthropic, model: "sim-large~seed=22"}}]}}
  cross: {{deployments: [{{provider: sim-anthropic, model: "sim-large~seed=23"}}]}}
  embed: {{deployments: [{{provider: sim, model: sim-embed}}]}}
  failing: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=500"}}]}}
  dropping: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=drop"}}]}}
cache:
  exact: {{ttl_s: 300, max_entry_bytes: 8000}}
  semantic: {{enabled: true, threshold: 0.95, embedding_model: embed}}
gateway: {{read_timeout_s: 5}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("cache-home")
    with running_gateway(
        home, lambda sim: CONFIG.format(sim=sim), seed=5, projects=("other",)
    ) as gw:
        gw.other_key = (home / "other.key").read_text()  # type: ignore[attr-defined]
        yield gw


def unique(text: str = "hello") -> list[Any]:
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex}"}]


def calls(gateway: Gateway, model: str) -> int:
    return int(gateway.simulator_stats()["models"].get(model, 0))


def post(
    gateway: Gateway,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        gateway.url + path,
        data=orjson.dumps(body),
        headers={
            "Authorization": f"Bearer {key or gateway.key}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)


def metrics(gateway: Gateway) -> str:
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_miss_then_hit_does_not_reach_the_provider(gateway: Gateway) -> None:
    messages = unique()
    before = calls(gateway, "sim-small~seed=21")
    with sdk(gateway) as client:
        first = client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, max_tokens=30
        )
        second = client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, max_tokens=30
        )
    assert first.headers["x-bastion-cache"] == "miss"
    assert second.headers["x-bastion-cache"] == "hit"
    assert calls(gateway, "sim-small~seed=21") == before + 1
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.usage is not None
    assert a.usage is not None
    assert b.usage.completion_tokens == a.usage.completion_tokens

    miss_span = gateway.span(first.headers["x-bastion-trace-id"])
    hit_span = gateway.span(second.headers["x-bastion-trace-id"])
    assert miss_span["attributes"]["bastion.cache.status"] == "miss"
    assert miss_span["cost_usd"] > 0
    assert hit_span["attributes"]["bastion.cache.status"] == "hit"
    assert hit_span["attributes"]["bastion.cache.layer"] == "exact"
    assert hit_span["cost_usd"] == 0
    saved = hit_span["attributes"]["bastion.cache.saved_usd"]
    assert saved == pytest.approx(miss_span["cost_usd"])
    text = metrics(gateway)
    assert 'bastion_gateway_cache_requests_total{layer="exact",outcome="hit"}' in text
    assert "bastion_gateway_cache_saved_usd_total" in text


def test_a_different_request_misses(gateway: Gateway) -> None:
    messages = unique()
    with sdk(gateway) as client:
        client.chat.completions.create(model="chat", messages=messages, max_tokens=30)
        other = client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, max_tokens=31
        )
        hotter = client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, max_tokens=30, temperature=0.5
        )
    assert other.headers["x-bastion-cache"] == "miss"
    assert hotter.headers["x-bastion-cache"] == "miss"


def test_streaming_and_non_streaming_share_entries_openai(gateway: Gateway) -> None:
    messages = unique("stream me")
    before = calls(gateway, "sim-small~seed=21")
    with sdk(gateway) as client:
        # Written by a stream, read back whole, then replayed as a stream with usage.
        with client.chat.completions.with_streaming_response.create(
            model="chat", messages=messages, max_tokens=20, stream=True
        ) as response:
            assert response.headers["x-bastion-cache"] == "miss"
            streamed = "".join(
                c.choices[0].delta.content or "" for c in response.parse() if c.choices
            )
        whole = client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, max_tokens=20
        )
        assert whole.headers["x-bastion-cache"] == "hit"
        assert whole.parse().choices[0].message.content == streamed
        with client.chat.completions.with_streaming_response.create(
            model="chat",
            messages=messages,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            assert response.headers["x-bastion-cache"] == "hit"
            chunks = list(response.parse())
    assert calls(gateway, "sim-small~seed=21") == before + 1
    replayed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert replayed == streamed
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"] or finish == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_stream_replayed_for_anthropic_sdk(gateway: Gateway) -> None:
    messages = unique("tell me")
    before = calls(gateway, "sim-large~seed=22")
    with claude(gateway) as client:
        first = client.messages.with_raw_response.create(
            model="claude", max_tokens=25, messages=messages
        )
        assert first.headers["x-bastion-cache"] == "miss"
        original = first.parse()
        with client.messages.stream(model="claude", max_tokens=25, messages=messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert calls(gateway, "sim-large~seed=22") == before + 1
    assert text == original.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == original.stop_reason
    assert final.usage.output_tokens == original.usage.output_tokens


def test_anthropic_client_of_an_openai_model_and_back(gateway: Gateway) -> None:
    """The entry is in the client's format: an OpenAI client of an Anthropic deployment gets
    an OpenAI body back from the cache, streamed or not."""
    messages = unique("cross")
    with sdk(gateway) as client:
        with client.chat.completions.with_streaming_response.create(
            model="cross", messages=messages, max_tokens=15, stream=True
        ) as response:
            first = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        again = client.chat.completions.with_raw_response.create(
            model="cross", messages=messages, max_tokens=15
        )
    assert again.headers["x-bastion-cache"] == "hit"
    assert again.parse().choices[0].message.content == first
    assert again.parse().object == "chat.completion"


def test_opt_out_headers(gateway: Gateway) -> None:
    model = "sim-small~seed=21"
    body = {"model": "chat", "messages": unique("opt out"), "max_tokens": 10}
    status, headers, _ = post(
        gateway, "/v1/chat/completions", body, {"x-bastion-cache": "no-store"}
    )
    assert status == 200
    assert headers["x-bastion-cache"] == "miss"
    status, headers, _ = post(gateway, "/v1/chat/completions", body)
    assert headers["x-bastion-cache"] == "miss"  # the no-store answer was not kept
    before = calls(gateway, model)
    status, headers, _ = post(gateway, "/v1/chat/completions", body)
    assert headers["x-bastion-cache"] == "hit"
    status, headers, _ = post(gateway, "/v1/chat/completions", body, {"Cache-Control": "no-cache"})
    assert headers["x-bastion-cache"] == "bypass"
    status, headers, _ = post(gateway, "/v1/chat/completions", body, {"x-bastion-cache": "off"})
    assert headers["x-bastion-cache"] == "bypass"
    assert calls(gateway, model) == before + 2
    # A namespace is its own cache.
    spaced = {"x-bastion-cache-key": "tenant-7"}
    assert post(gateway, "/v1/chat/completions", body, spaced)[1]["x-bastion-cache"] == "miss"
    assert post(gateway, "/v1/chat/completions", body, spaced)[1]["x-bastion-cache"] == "hit"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-bastion-cache", "sometimes"),
        ("x-bastion-cache-ttl", "-1"),
        ("x-bastion-cache-ttl", "nan"),
        ("x-bastion-cache-ttl", "999999999"),
        ("x-bastion-cache-key", "x" * 300),
    ],
)
def test_bad_cache_headers_are_400_naming_the_header(
    gateway: Gateway, header: str, value: str
) -> None:
    body = {"model": "chat", "messages": unique(), "max_tokens": 5}
    status, _, raw = post(gateway, "/v1/chat/completions", body, {header: value})
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert header in error["message"]
    assert error["param"] == header


def test_per_request_ttl_expires(gateway: Gateway) -> None:
    body = {"model": "chat", "messages": unique("short-lived"), "max_tokens": 5}
    ttl = {"x-bastion-cache-ttl": "1"}
    assert post(gateway, "/v1/chat/completions", body, ttl)[1]["x-bastion-cache"] == "miss"
    assert post(gateway, "/v1/chat/completions", body)[1]["x-bastion-cache"] == "hit"
    deadline = time.monotonic() + 15
    while True:
        time.sleep(0.5)
        status = post(gateway, "/v1/chat/completions", body, ttl)[1]["x-bastion-cache"]
        if status == "miss":
            break
        assert time.monotonic() < deadline, "the entry never expired"


def test_other_project_never_gets_the_cached_answer(gateway: Gateway) -> None:
    """Same request, same namespace, another project's key: a miss, answered by the provider."""
    body = {"model": "chat", "messages": unique("secret"), "max_tokens": 12}
    spaced = {"x-bastion-cache-key": "shared-name"}
    assert post(gateway, "/v1/chat/completions", body, spaced)[1]["x-bastion-cache"] == "miss"
    assert post(gateway, "/v1/chat/completions", body, spaced)[1]["x-bastion-cache"] == "hit"
    other = gateway.other_key  # type: ignore[attr-defined]
    before = calls(gateway, "sim-small~seed=21")
    status, headers, _ = post(gateway, "/v1/chat/completions", body, spaced, key=other)
    assert status == 200
    assert headers["x-bastion-cache"] == "miss"
    status, headers, _ = post(gateway, "/v1/chat/completions", body, key=other)
    assert headers["x-bastion-cache"] == "miss"
    assert calls(gateway, "sim-small~seed=21") == before + 2


def test_errors_are_not_cached(gateway: Gateway) -> None:
    body = {"model": "failing", "messages": unique(), "max_tokens": 5}
    for _ in range(2):
        status, headers, _ = post(gateway, "/v1/chat/completions", body)
        assert status == 500
        assert headers.get("x-bastion-cache") != "hit"


def test_interrupted_streams_are_not_cached(gateway: Gateway) -> None:
    body = {"model": "dropping", "messages": unique(), "max_tokens": 30, "stream": True}
    for _ in range(2):
        status, headers, raw = post(gateway, "/v1/chat/completions", body)
        assert status == 200  # the head went out before the provider broke off
        assert headers["x-bastion-cache"] == "miss"
        assert b"upstream_interrupted" in raw or b"error" in raw
    status, headers, _ = post(gateway, "/v1/chat/completions", {**body, "stream": False})
    assert status != 200 or headers["x-bastion-cache"] != "hit"


def test_answers_over_the_size_limit_are_not_stored(gateway: Gateway) -> None:
    words = "Reply with: " + "word " * 2000
    body = {"model": "chat", "messages": unique(words), "max_tokens": 3000}
    for _ in range(2):
        status, headers, raw = post(gateway, "/v1/chat/completions", body)
        assert status == 200
        assert len(raw) > 8000
        assert headers["x-bastion-cache"] == "miss"


def test_embeddings_are_cached(gateway: Gateway) -> None:
    text = f"embed me {uuid.uuid4().hex}"
    before = calls(gateway, "sim-embed")
    with sdk(gateway) as client:
        first = client.embeddings.with_raw_response.create(model="embed", input=text)
        second = client.embeddings.with_raw_response.create(model="embed", input=text)
    assert (first.headers["x-bastion-cache"], second.headers["x-bastion-cache"]) == ("miss", "hit")
    assert first.parse().data[0].embedding == second.parse().data[0].embedding
    assert calls(gateway, "sim-embed") == before + 1


def test_semantic_hit_and_miss(gateway: Gateway) -> None:
    """The same words in another shape (text parts instead of a string) are a different exact
    key but the same meaning: the semantic layer answers, with its similarity on the span."""
    words = f"what is the capital of france {uuid.uuid4().hex}"
    as_string = [{"role": "user", "content": words}]
    as_parts = [{"role": "user", "content": [{"type": "text", "text": words}]}]
    before = calls(gateway, "sim-small~seed=21")
    with sdk(gateway) as client:
        first = client.chat.completions.with_raw_response.create(
            model="chat", messages=as_string, max_tokens=12
        )
        second = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=as_parts,  # type: ignore[arg-type]
            max_tokens=12,
        )
        different = client.chat.completions.with_raw_response.create(
            model="chat", messages=unique("something else entirely"), max_tokens=12
        )
    assert first.headers["x-bastion-cache"] == "miss"
    assert second.headers["x-bastion-cache"] == "hit"
    assert different.headers["x-bastion-cache"] == "miss"
    assert calls(gateway, "sim-small~seed=21") == before + 2
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    span = gateway.span(second.headers["x-bastion-trace-id"])
    assert span["attributes"]["bastion.cache.layer"] == "semantic"
    assert span["attributes"]["bastion.cache.similarity"] >= 0.95
    # Another max_tokens is another partition: never a semantic hit.
    with sdk(gateway) as client:
        other = client.chat.completions.with_raw_response.create(
            model="chat", messages=as_string, max_tokens=13
        )
    assert other.headers["x-bastion-cache"] == "miss"


WEATHER_OPENAI: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
        },
    }
]  # fmt: skip


def test_tool_calls_replayed_as_a_stream_openai(gateway: Gateway) -> None:
    messages = unique("call get_weather for Oslo")
    with sdk(gateway) as client:
        whole = client.chat.completions.create(
            model="chat", messages=messages, tools=WEATHER_OPENAI, max_tokens=50
        )
        with client.chat.completions.with_streaming_response.create(
            model="chat", messages=messages, tools=WEATHER_OPENAI, max_tokens=50, stream=True
        ) as response:
            assert response.headers["x-bastion-cache"] == "hit"
            chunks = list(response.parse())
    expected = whole.choices[0].message.tool_calls
    assert expected
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas if d.function] == [
        t.function.name  # type: ignore[union-attr]
        for t in expected
    ]
    assert deltas[0].id == expected[0].id
    arguments = deltas[0].function.arguments if deltas[0].function else None
    assert arguments == expected[0].function.arguments  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_use_replayed_as_a_stream_anthropic(gateway: Gateway) -> None:
    tools: Any = [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    messages = unique("call get_weather for Bergen")
    with claude(gateway) as client:
        whole = client.messages.create(
            model="claude", max_tokens=60, messages=messages, tools=tools
        )
        with client.messages.stream(
            model="claude", max_tokens=60, messages=messages, tools=tools
        ) as stream:
            assert stream.response.headers["x-bastion-cache"] == "hit"
            final = stream.get_final_message()
    assert whole.stop_reason == "tool_use"
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    assert final.stop_reason == "tool_use"
