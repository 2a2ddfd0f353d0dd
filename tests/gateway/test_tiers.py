"""Tiered routing end to end: a gateway in this process (so a classifier registered here is
used) on loopback, the simulator as provider, spans read back from the store (SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest

from bastion.gateway.tiers import (
    ClassifierError,
    Decision,
    RulesClassifier,
    classifier_names,
    make_classifier,
    register_classifier,
)
from bastion.providers.simulator import SimulatorConfig, SimulatorServer
from bastion.settings import Settings, load_settings
from tests.conftest import start_live_server
from tests.gateway.conftest import Gateway

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
  sim-anthropic: {{type: anthropic, base_url: "{sim}"}}
models:
  cheap: {{deployments: [{{provider: sim, model: "sim-small~seed=31"}}]}}
  flagship: {{deployments: [{{provider: sim-anthropic, model: "sim-large~seed=32"}}]}}
  chat:
    tiers: {{simple: cheap, complex: flagship}}
    classifier:
      name: rules
      max_simple_tokens: 40
      complex_keywords: [prove, step by step]
      complex_patterns: ['\\bdef \\w+\\(']
  custom:
    tiers: {{short: cheap, long: flagship}}
    classifier: {{name: test-odd-even, unit: 2}}
    default_tier: long
cache:
  exact: {{ttl_s: 60}}
"""


class OddEven:
    """A test classifier: the last message's length in ``unit``s, odd or even."""

    def __init__(self, unit: int) -> None:
        self.unit = unit

    def classify(self, body: Mapping[str, Any], api: str) -> Decision:
        text = str(body["messages"][-1]["content"])
        if text == "confuse":
            return Decision("nonexistent", "a tier the alias lacks")
        if text == "crash":
            raise RuntimeError("boom")
        tier = "short" if (len(text) // self.unit) % 2 == 0 else "long"
        return Decision(tier, f"{len(text)} chars via {api}")


def odd_even(options: Mapping[str, Any]) -> OddEven:
    return OddEven(int(options.get("unit", 1)))


register_classifier("test-odd-even", odd_even)


@pytest.fixture
def gateway(settings: Settings, tmp_path: Path) -> Iterator[Gateway]:
    with SimulatorServer(SimulatorConfig(seed=3)) as sim:
        config = tmp_path / "bastion.yaml"
        config.write_text(CONFIG.format(sim=sim.url))
        loaded = load_settings(config, home=settings.home, database_url=settings.database_url)
        server, stop = start_live_server(loaded)
        try:
            yield Gateway(url=server.url, key=server.admin_key, simulator_url=sim.url,
                          home=settings.home)  # fmt: skip
        finally:
            stop()


def ask(client: openai.OpenAI, model: str, content: str, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=8, **extra
    )


def test_tier_decisions_are_routed_and_on_the_span(gateway: Gateway) -> None:
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as c:
        simple = ask(c, "chat", "hi there")
        long = ask(c, "chat", "tell me about this " * 20)
        keyword = ask(c, "chat", "Prove it")
        pattern = ask(c, "chat", "what does def run(x) do")
        with_tools = ask(c, "chat", "hi", tools=tools)
        custom_short = ask(c, "custom", "ab")  # 2 chars / 2 = 1: odd → long
        custom_long = ask(c, "custom", "abcd")  # 4 / 2 = 2: even → short
        confused = ask(c, "custom", "confuse")
        crashed = ask(c, "custom", "crash")
        repeated = ask(c, "chat", "hi there")  # same request as `simple`: cached

    expected = [
        (simple, "simple", "cheap", "no complexity rule"),
        (long, "complex", "flagship", "tokens > 40"),
        (keyword, "complex", "flagship", "keyword 'prove'"),
        (pattern, "complex", "flagship", "pattern"),
        (with_tools, "complex", "flagship", "tools declared"),
        (custom_short, "long", "flagship", "2 chars via openai"),
        (custom_long, "short", "cheap", "4 chars via openai"),
        (confused, "long", "flagship", "unknown tier 'nonexistent'"),
        (crashed, "long", "flagship", "classifier failed (RuntimeError)"),
    ]
    for response, tier, target, reason in expected:
        span = gateway.span(response.headers["x-bastion-trace-id"])
        attributes = span["attributes"]
        assert attributes["bastion.routing.tier"] == tier, attributes
        assert attributes["bastion.routing.target"] == target
        assert reason in attributes["bastion.routing.reason"]
        assert span["request_model"] in ("chat", "custom")  # what the client asked for
        served = "sim-large" if target == "flagship" else "sim-small"
        assert response.parse().model.startswith(served)  # what served it, as for any alias
    assert repeated.headers["x-bastion-cache"] == "hit"
    span = gateway.span(repeated.headers["x-bastion-trace-id"])
    assert span["attributes"]["bastion.routing.tier"] == "simple"


def test_the_rules_classifier_is_an_entry_point() -> None:
    assert "rules" in classifier_names()
    assert isinstance(make_classifier("rules", {}), RulesClassifier)
    with pytest.raises(ClassifierError, match="unknown classifier 'nope'"):
        make_classifier("nope", {})
