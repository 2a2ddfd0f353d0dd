"""The cache's parts on their own: stores (memory with an injected clock, real Redis), keys,
stream folding and replay, the semantic index, configuration errors and the rules classifier."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from bastion.gateway.cache import ResponseCache
from bastion.gateway.cache_config import CacheConfig, load_cache_config
from bastion.gateway.cache_replay import anthropic_events, body_from_stream, openai_events
from bastion.gateway.cache_store import CachedAnswer, MemoryStore, RedisStore
from bastion.gateway.router import Router
from bastion.gateway.semantic_cache import SemanticCache, last_user_text
from bastion.gateway.tiers import ClassifierError, TierRouter, rules_classifier
from bastion.providers.config import load_gateway_config
from bastion.providers.simulator import SimulatorConfig, SimulatorServer
from bastion.providers.sse import SseParser
from bastion.providers.translate import AnthropicStreamObserver, OpenAIStreamObserver
from bastion.providers.upstream import Upstream
from bastion.settings import ConfigError, Settings, load_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str = "hi", cost: float | None = 0.5) -> CachedAnswer:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    return CachedAnswer(orjson.dumps(body), "m", 3, 4, None, None, cost, 1.0)


# -- stores --------------------------------------------------------------------------------


def test_memory_store_expires_entries_on_its_clock() -> None:
    clock = Clock()
    store = MemoryStore(10, clock=clock)
    store.set_now("k", answer(), 300)
    clock.now += 299.9
    assert store.get_now("k") == answer()
    clock.now += 0.2
    assert store.get_now("k") is None
    assert len(store) == 0


def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemoryStore(2, clock=Clock())
    store.set_now("a", answer("a"), 60)
    store.set_now("b", answer("b"), 60)
    assert store.get_now("a") is not None  # a is now the most recent
    store.set_now("c", answer("c"), 60)
    assert store.get_now("b") is None
    assert store.get_now("a") is not None
    assert store.get_now("c") is not None


def test_memory_store_is_bounded_in_bytes() -> None:
    store = MemoryStore(100, max_bytes=3 * len(answer("x").body), clock=Clock())
    for name in "abcd":
        store.set_now(name, answer(name), 60)
    assert len(store) == 3
    assert store.get_now("a") is None
    assert store.size_bytes == 3 * len(answer("x").body)
    store.set_now("d", answer("d"), 60)  # replaced, not counted twice
    assert store.size_bytes == 3 * len(answer("x").body)


def test_entry_encoding_round_trips_and_rejects_junk() -> None:
    original = answer("x" * 100)
    assert CachedAnswer.decode(original.encode()) == original
    assert CachedAnswer.decode(b"no newline") is None
    assert CachedAnswer.decode(b"not json\n{}") is None
    assert CachedAnswer.decode(b'{"v": 999}\n{}') is None


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; only its keys are deleted afterwards."""
    import redis

    value = f"bastion-test:{uuid.uuid4().hex}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=value + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _redis_store(url: str, prefix: str, errors: Counter, clock: Clock | None = None) -> RedisStore:
    return RedisStore(
        url,
        prefix=prefix,
        timeout_s=0.5,
        retry_s=5.0,
        fallback=MemoryStore(10, clock=clock or Clock()),
        errors=errors,
        clock=clock or Clock(),
    )


def test_redis_store_shares_and_expires(prefix: str) -> None:
    errors = Counter("errors", "e", ["operation"], registry=CollectorRegistry())

    async def run() -> None:
        writer = _redis_store(REDIS_URL, prefix, errors)
        reader = _redis_store(REDIS_URL, prefix, errors)
        try:
            await writer.set("k", answer("shared"), 0.3)
            assert await reader.get("k") == answer("shared")
            for _ in range(100):
                if await reader.get("k") is None:
                    break
                await asyncio.sleep(0.1)
            assert await reader.get("k") is None
        finally:
            await writer.close()
            await reader.close()

    asyncio.run(run())
    assert errors.labels("get")._value.get() == 0


def test_redis_down_falls_back_to_memory_and_counts() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"  # bound, not listening
    registry = CollectorRegistry()
    errors = Counter("errors", "e", ["operation"], registry=registry)
    clock = Clock()

    async def run() -> None:
        store = _redis_store(dead, "p:", errors, clock)
        try:
            assert await store.get("k") is None
            assert not store.healthy
            await store.set("k", answer("local"), 60)
            assert await store.get("k") == answer("local")  # from memory, no Redis attempt
            assert errors.labels("get")._value.get() == 1
            clock.now += 6  # retry period over: Redis is tried (and fails) once more
            assert await store.get("k") == answer("local")
            assert errors.labels("get")._value.get() == 2
        finally:
            await store.close()

    asyncio.run(run())


# -- keys ----------------------------------------------------------------------------------


def test_key_ignores_stream_and_attribution_but_not_inputs() -> None:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": 1, "b": 2}}}],
    }
    key = ResponseCache.key(1, "", "chat", "openai", "chat", body)
    same = {
        **body,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "metadata": {"feature": "x"},
        "tools": [{"function": {"parameters": {"b": 2, "a": 1}, "name": "f"}, "type": "function"}],
    }
    assert ResponseCache.key(1, "", "chat", "openai", "chat", same) == key
    different = [
        ResponseCache.key(2, "", "chat", "openai", "chat", body),
        ResponseCache.key(1, "ns", "chat", "openai", "chat", body),
        ResponseCache.key(1, "", "other", "openai", "chat", body),
        ResponseCache.key(1, "", "chat", "anthropic", "chat", body),
        ResponseCache.key(1, "", "chat", "openai", "chat", {**body, "temperature": 0.1}),
        ResponseCache.key(1, "", "chat", "openai", "chat", {**body, "n": 2}),
        ResponseCache.key(1, "", "chat", "openai", "chat", {**body, "messages": []}),
    ]
    assert key not in different
    assert len(set(different)) == len(different)


def test_hot_requests_skip_the_cache_when_configured() -> None:
    config = CacheConfig.model_validate({"exact": {"max_temperature": 0.2}})
    cache = ResponseCache(config, registry=CollectorRegistry())
    assert cache._cacheable({"temperature": 0})
    assert cache._cacheable({"temperature": 0.2})
    assert not cache._cacheable({"temperature": 0.7})
    assert not cache._cacheable({})  # the providers' default temperature is 1


# -- streams -------------------------------------------------------------------------------

_ANTHROPIC_STREAM = [
    (
        "message_start",
        {"message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 9}}},
    ),
    ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "check."}}),
    ("content_block_stop", {"index": 0}),
    (
        "content_block_start",
        {"index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "get", "input": {}}},
    ),
    (
        "content_block_delta",
        {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}},
    ),
    ("content_block_stop", {"index": 1}),
    ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
    ("message_stop", {}),
]


def _observe_anthropic(raw: bytes) -> AnthropicStreamObserver:
    observer = AnthropicStreamObserver()
    parser = SseParser()
    for event in [*parser.feed(raw), *parser.close()]:
        observer.observe(event)
    return observer


def _anthropic_source() -> AnthropicStreamObserver:
    raw = b"".join(
        f"event: {name}\ndata: {orjson.dumps({'type': name, **p}).decode()}\n\n".encode()
        for name, p in _ANTHROPIC_STREAM
    )
    return _observe_anthropic(raw)


def test_a_folded_anthropic_stream_replays_as_the_same_stream() -> None:
    source = _anthropic_source()
    body = orjson.loads(body_from_stream("anthropic", "anthropic", source.summary, None))
    assert body["id"] == "msg_1"
    assert body["stop_reason"] == "tool_use"
    assert body["content"][1] == {"type": "tool_use", "id": "t1", "name": "get",
                                  "input": {"city": "Oslo"}}  # fmt: skip
    replayed = _observe_anthropic(anthropic_events(body)).summary
    assert replayed.done
    assert "".join(replayed.text) == "Let me check."
    call = replayed.tool_calls[0]
    assert (call["id"], call["function"]["name"]) == ("t1", "get")
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert replayed.finish_reason == "tool_use"
    assert replayed.usage.output_tokens == 12
    assert replayed.usage.input_tokens == 9


def test_an_anthropic_stream_folded_for_an_openai_client_replays_as_chunks() -> None:
    source = _anthropic_source()
    body = orjson.loads(body_from_stream("openai", "anthropic", source.summary, None))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    observer = OpenAIStreamObserver()
    parser = SseParser()
    raw = openai_events(body, include_usage=True)
    for event in [*parser.feed(raw), *parser.close()]:
        observer.observe(event)
    summary = observer.summary
    assert summary.done
    assert "".join(summary.text) == "Let me check."
    assert summary.tool_calls[0]["function"] == {"name": "get", "arguments": '{"city": "Oslo"}'}
    assert summary.usage.output_tokens == 12
    without_usage = openai_events(body, include_usage=False)
    assert b'"usage"' not in without_usage


# -- semantic index ------------------------------------------------------------------------


def _semantic(clock: Clock, **config: Any) -> SemanticCache:
    from bastion.gateway.cache_config import SemanticCacheConfig
    from bastion.providers.config import GatewayConfig

    settings = SemanticCacheConfig(enabled=True, embedding_model="embed", **config)
    gateway_config = GatewayConfig(providers={}, aliases={})
    return SemanticCache(
        settings,
        gateway_config,
        Router(gateway_config),
        Upstream(connect_timeout_s=5, read_timeout_s=5, max_connections=4),
        clock=clock,
    )


def test_semantic_index_finds_the_nearest_in_its_partition_only() -> None:
    clock = Clock()
    index = _semantic(clock, ttl_s=10, max_entries=2)
    index.add("p", [1.0, 0.0], answer("east"))
    index.add("p", [0.0, 1.0], answer("north"))
    found = index.search("p", [0.96, 0.28])
    assert found is not None
    assert found[0] == answer("east")
    assert found[1] == pytest.approx(0.96)
    assert index.search("q", [1.0, 0.0]) is None
    index.add("p", [-1.0, 0.0], answer("west"))  # over max_entries: the LRU one goes
    assert len(index) == 2
    clock.now += 11
    assert index.search("p", [1.0, 0.0]) is None
    assert len(index) == 0


def test_last_user_text_and_partition() -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    }
    assert last_user_text("openai", body) == (1, "a\nb")
    image = {"type": "image_url", "image_url": {"url": "x"}}
    assert last_user_text("openai", {"messages": [{"role": "user", "content": [image]}]}) is None
    index = _semantic(Clock())
    one = index.query(1, "", "chat", "openai", body)
    other_system = {"messages": [{"role": "system", "content": "be long"}, body["messages"][1]]}
    two = index.query(1, "", "chat", "openai", other_system)
    three = index.query(2, "", "chat", "openai", body)
    assert one is not None
    assert two is not None
    assert three is not None
    assert one.text == two.text == "a\nb"
    assert len({one.partition, two.partition, three.partition}) == 3


def test_simulator_embeddings_hit_identical_and_miss_different_text() -> None:
    async def run(url: str) -> None:
        from bastion.gateway.cache_config import SemanticCacheConfig
        from bastion.providers.config import Deployment, GatewayConfig, ModelAlias, ProviderConfig

        provider = ProviderConfig(name="sim", kind="openai", base_url=url + "/v1")
        alias = ModelAlias("embed", (Deployment(provider, "sim-embed"),))
        config = GatewayConfig(providers={"sim": provider}, aliases={"embed": alias})
        upstream = Upstream(connect_timeout_s=5, read_timeout_s=5, max_connections=4)
        await upstream.start()
        try:
            settings = SemanticCacheConfig(enabled=True, embedding_model="embed")
            index = SemanticCache(settings, config, Router(config), upstream)
            first = await index.embed("what is the capital of France?")
            same = await index.embed("what is the capital of France?")
            other = await index.embed("how do I bake bread?")
            assert first is not None
            assert same == first
            assert other is not None
            index.add("p", first, answer("Paris"))
            hit = index.search("p", same)
            assert hit is not None
            assert hit[1] == pytest.approx(1.0)
            miss = index.search("p", other)
            assert miss is not None
            assert miss[1] < 0.5
        finally:
            await upstream.close()

    with SimulatorServer(SimulatorConfig()) as sim:
        asyncio.run(run(sim.url))


# -- configuration -------------------------------------------------------------------------


def _settings(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "bastion.yaml"
    path.write_text(text)
    return load_settings(path, home=tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cache:\n  exact:\n    ttl_s: -1\n", ":3: cache.exact.ttl_s"),
        ("cache:\n  exact: {ttl: 1}\n", ":2: cache.exact.ttl"),
        ("cache:\n  semantic:\n    enabled: true\n", "embedding_model is required"),
        ("cache: [1]\n", "cache: must be a mapping"),
        ("cache:\n  exact:\n    ttl_s: 100\n    max_ttl_s: 10\n", "exceeds max_ttl_s"),
    ],
)
def test_bad_cache_config_names_key_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_cache_config(_settings(tmp_path, text))


_PROVIDERS = "providers:\n  p: {type: openai, base_url: 'http://127.0.0.1:1/v1'}\nmodels:\n"
_ONE = "  a: {deployments: [{provider: p, model: m}]}\n"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("  t:\n    tiers: {simple: nope}\n", "models.t.tiers.simple: unknown model alias 'nope'"),
        ("  t:\n    tiers: {simple: a}\n  u:\n    tiers: {simple: t}\n", "'t' is a tiered alias"),
        ("  t:\n    tiers: {simple: a}\n    deployments: [{provider: p, model: m}]\n", "not both"),
        ("  t:\n    tiers: {simple: a}\n    fallbacks: [a]\n", "has no fallbacks"),
        ("  t:\n    classifier: {name: rules}\n", "needs deployments"),
        ("  t:\n    tiers: {simple: a}\n    default_tier: hard\n", "default_tier 'hard'"),
        (
            "  t:\n    tiers: {simple: a}\n  b:\n    deployments: [{provider: p, model: m}]\n"
            "    fallbacks: [t]\n",
            "fall back to one of its tiers",
        ),
    ],
)
def test_bad_tier_config_is_rejected(tmp_path: Path, models: str, message: str) -> None:
    settings = _settings(tmp_path, _PROVIDERS + _ONE + models)
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(settings)


@pytest.mark.parametrize(
    ("classifier", "message"),
    [
        ("{name: rules, max_simple_tokens: -1}", "max_simple_tokens"),
        ("{name: rules, complex_patterns: ['(']}", "not a valid regex"),
        ("{name: rules, bogus: 1}", "unknown option 'bogus'"),
        ("{name: nowhere}", "unknown classifier 'nowhere'"),
    ],
)
def test_bad_classifier_config_names_the_alias(
    tmp_path: Path, classifier: str, message: str
) -> None:
    models = f"  t:\n    tiers: {{simple: a, complex: a}}\n    classifier: {classifier}\n"
    settings = _settings(tmp_path, _PROVIDERS + _ONE + models)
    config = load_gateway_config(settings)
    with pytest.raises(ConfigError, match=f"bastion.yaml:7: models.t.classifier: .*{message}"):
        TierRouter.from_config(config, settings)


def test_rules_classifier_decisions() -> None:
    rules = rules_classifier(
        {"max_simple_tokens": 10, "max_simple_messages": 2, "complex_keywords": ["refactor"]}
    )

    def tier(messages: list[Any], **extra: Any) -> str:
        return rules.classify({"messages": messages, **extra}, "openai").tier

    user = {"role": "user", "content": "short"}
    assert tier([user]) == "simple"
    assert tier([user, user, user]) == "complex"
    assert tier([{"role": "user", "content": "x" * 100}]) == "complex"
    assert tier([{"role": "user", "content": "Refactor it"}]) == "complex"
    assert tier([{"role": "user", "content": "refactoring"}]) == "simple"  # whole words only
    assert tier([user], tools=[{"type": "function"}]) == "complex"
    assert tier([user], system="s" * 100) == "complex"
    with pytest.raises(ClassifierError):
        rules_classifier({"tools_are_complex": "yes"})
