"""The resilience pieces on their own: breaker states, balancing, backoff, config validation."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bastion.gateway.breaker import Breaker, Breakers
from bastion.gateway.errors import GatewayError
from bastion.gateway.recording import Call, TraceContext
from bastion.gateway.resilience import Resilience, _Run, backoff_delay
from bastion.gateway.router import Router
from bastion.providers.config import (
    BreakerPolicy,
    Deployment,
    GatewayConfig,
    ModelAlias,
    ProviderConfig,
    fallback_chains,
    load_gateway_config,
)
from bastion.settings import ConfigError, GatewaySettings, load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = BreakerPolicy(error_rate=0.5, window_s=10, min_requests=4, cooldown_s=5)


def test_breaker_opens_on_error_rate_with_min_requests() -> None:
    clock = Clock()
    breaker = Breaker("p/m", POLICY, clock=clock)
    assert breaker.record(False) is None  # 1/1 failed, but fewer than min_requests
    assert breaker.record(True) is None
    assert breaker.record(False) is None  # 2/3
    transition = breaker.record(False)  # 3/4 ≥ 0.5 with 4 requests
    assert transition is not None
    assert (transition.from_state, transition.to_state) == (
        "closed",
        "open",
    )
    assert not breaker.available()
    assert breaker.retry_after_s() == pytest.approx(5)


def test_breaker_window_forgets_old_outcomes() -> None:
    clock = Clock()
    breaker = Breaker("p/m", POLICY, clock=clock)
    for _ in range(3):
        breaker.record(False)
    clock.now += 11  # past the 10 s window
    assert breaker.record(False) is None  # only 1 request in the window now
    assert breaker.state == "closed"


def test_half_open_allows_one_probe_then_closes_or_reopens() -> None:
    clock = Clock()
    breaker = Breaker("p/m", POLICY, clock=clock)
    for _ in range(4):
        breaker.record(False)
    clock.now += 5
    assert breaker.available()
    transition = breaker.acquire()
    assert transition is not None
    assert transition.to_state == "half_open"
    assert not breaker.available()  # one probe at a time
    assert breaker.record(True) is None  # a request sent before it opened does not decide
    assert breaker.state == "half_open"
    reopened = breaker.record(False, probe=True)
    assert reopened is not None
    assert reopened.to_state == "open"
    assert not breaker.available()
    clock.now += 5
    breaker.acquire()
    breaker.release()  # the probe's client went away: no verdict, another may probe
    assert breaker.available()
    breaker.acquire()
    closed = breaker.record(True, probe=True)
    assert closed is not None
    assert closed.to_state == "closed"
    assert breaker.record(False) is None  # a fresh window after closing


def test_breakers_count_transitions_in_the_registry() -> None:
    provider = ProviderConfig(name="p", kind="openai", base_url="http://x")
    alias = ModelAlias("a", (Deployment(provider, "m"),), breaker=POLICY)
    registry = CollectorRegistry()
    breakers = Breakers([alias], registry, clock=Clock())
    breaker = breakers.get("p/m")
    assert breaker is not None
    assert breakers.get("p/other") is None
    for _ in range(4):
        breakers.note(breaker.record(False))
    value = registry.get_sample_value(
        "bastion_gateway_breaker_transitions_total", {"deployment": "p/m", "to": "open"}
    )
    assert value == 1.0
    assert registry.get_sample_value("bastion_gateway_breaker_state", {"deployment": "p/m"}) == 2


def _alias(routing: str, *models: str) -> tuple[GatewayConfig, ModelAlias]:
    provider = ProviderConfig(name="p", kind="openai", base_url="http://x")
    alias = ModelAlias(
        "a",
        tuple(Deployment(provider, m) for m in models),
        routing=routing,  # type: ignore[arg-type]
    )
    return GatewayConfig(providers={"p": provider}, aliases={"a": alias}), alias


def test_least_busy_picks_the_fewest_in_flight() -> None:
    config, alias = _alias("least-busy", "m1", "m2", "m3")
    router = Router(config, rng=random.Random(1))
    one, two, three = alias.deployments
    router.stats(one).in_flight = 3
    router.stats(two).in_flight = 1
    router.stats(three).in_flight = 2
    assert router.choose(alias) is two
    assert router.choose(alias, [one, three]) is three


def test_least_latency_measures_unknown_deployments_then_picks_the_fastest() -> None:
    config, alias = _alias("least-latency", "m1", "m2")
    router = Router(config, rng=random.Random(1), explore=0.0)
    fast, slow = alias.deployments
    router.stats(slow).observe_latency(300)
    assert router.choose(alias) is fast  # not measured yet: tried first
    router.stats(fast).observe_latency(100)
    assert all(router.choose(alias) is fast for _ in range(20))
    for _ in range(10):  # the fast one got slow: the average follows
        router.stats(fast).observe_latency(900)
    assert router.choose(alias) is slow


def test_weighted_choice_follows_weights_among_usable() -> None:
    provider = ProviderConfig(name="p", kind="openai", base_url="http://x")
    heavy, light, off = (Deployment(provider, m, w) for m, w in (("h", 9), ("l", 1), ("o", 5)))
    alias = ModelAlias("a", (heavy, light, off))
    router = Router(GatewayConfig({"p": provider}, {"a": alias}), rng=random.Random(3))
    picks = [router.choose(alias, [heavy, light]).model for _ in range(2000)]
    assert "o" not in picks
    assert 0.85 < picks.count("h") / len(picks) < 0.95


def test_backoff_is_full_jitter_exponential_and_respects_retry_after() -> None:
    rng = random.Random(5)
    delays = [
        backoff_delay(3, base_s=0.1, max_s=2.0, retry_after_s=None, rng=rng) for _ in range(200)
    ]
    assert 0 <= min(delays) < 0.05
    assert 0.3 < max(delays) <= 0.4
    capped = backoff_delay(20, base_s=0.1, max_s=2.0, retry_after_s=None, rng=rng)
    assert capped <= 2.0
    assert backoff_delay(1, base_s=0.1, max_s=2.0, retry_after_s=1.5, rng=rng) >= 1.5


def _load(tmp_path: Path, models: str) -> GatewayConfig:
    path = tmp_path / "bastion.yaml"
    path.write_text(
        'providers:\n  p: {type: openai, base_url: "http://127.0.0.1:1/v1"}\nmodels:\n' + models
    )
    return load_gateway_config(load_settings(path))


def test_config_parses_resilience_settings(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "  chat:\n"
        "    deployments: [{provider: p, model: m}]\n"
        "    fallbacks: [backup]\n"
        "    retries: 2\n"
        "    timeout: {connect_s: 2, first_byte_s: 10, idle_s: 15, total_s: 60}\n"
        "    routing: least-latency\n"
        "    breaker: {error_rate: 0.05, window_s: 60, min_requests: 5, cooldown_s: 30}\n"
        "  backup: {deployments: [{provider: p, model: n}], fallbacks: [last]}\n"
        "  last: {deployments: [{provider: p, model: o}]}\n",
    )
    chat = config.aliases["chat"]
    assert chat.fallbacks == ("backup",)
    assert chat.retries == 2
    assert chat.routing == "least-latency"
    assert chat.timeout is not None
    assert chat.timeout.first_byte_s == 10
    assert chat.breaker == BreakerPolicy(0.05, 60, 5, 30)
    assert [a.name for a in fallback_chains(config)["chat"]] == ["chat", "backup", "last"]


@pytest.mark.parametrize(
    ("models", "needle"),
    [
        (
            "  a: {deployments: [{provider: p, model: m}], fallbacks: [nope]}\n",
            "bastion.yaml:4: models.a.fallbacks[0]: unknown model alias 'nope'",
        ),
        (
            "  a: {deployments: [{provider: p, model: m}], fallbacks: [a]}\n",
            "models.a.fallbacks[0]: an alias cannot fall back to itself",
        ),
        (
            "  a: {deployments: [{provider: p, model: m}], fallbacks: [b]}\n"
            "  b: {deployments: [{provider: p, model: m}], fallbacks: [c]}\n"
            "  c: {deployments: [{provider: p, model: m}], fallbacks: [a]}\n",
            "models.c.fallbacks: fallback cycle a -> b -> c -> a",
        ),
        (
            "  a:\n    deployments: [{provider: p, model: m}]\n    routing: fastest\n",
            "bastion.yaml:6: models.a.routing: Input should be 'weighted', 'least-latency' or",
        ),
        (
            "  a:\n    deployments: [{provider: p, model: m}]\n    breaker: {error_rate: 1.5}\n",
            "models.a.breaker.error_rate: Input should be less than or equal to 1",
        ),
        (
            "  a:\n    deployments: [{provider: p, model: m}]\n    timeout: {idle: 3}\n",
            "models.a.timeout.idle: Extra inputs are not permitted",
        ),
        (
            "  a:\n    deployments: [{provider: p, model: m}]\n    retries: -1\n",
            "models.a.retries: Input should be greater than or equal to 0",
        ),
    ],
)
def test_config_errors_name_key_and_line(tmp_path: Path, models: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, models)
    assert needle in str(caught.value)


def _serve_with_fake_upstream(
    monkeypatch: pytest.MonkeyPatch, retry_after_s: float
) -> tuple[list[str], float, dict[str, Any]]:
    """Alias ``a`` (m1, 3 retries, always 429 with ``retry_after_s``) falling back to ``b``."""
    provider = ProviderConfig(name="p", kind="openai", base_url="http://x")
    a = ModelAlias("a", (Deployment(provider, "m1"),), retries=3, fallbacks=("b",))
    b = ModelAlias("b", (Deployment(provider, "m2"),))
    config = GatewayConfig({"p": provider}, {"a": a, "b": b})
    settings = GatewaySettings(retry_after_max_s=1.0, retry_base_delay_s=0.0)
    resilience = Resilience(settings, config, Router(config), Breakers([]), upstream=None)  # type: ignore[arg-type]
    sent: list[str] = []

    async def exchange(self: _Run, alias: ModelAlias, deployment: Deployment, *_: Any) -> Any:
        sent.append(deployment.model)
        if deployment.model == "m1":
            raise GatewayError(
                429, "slow down", error_class="upstream_rate_limited", retry_after_s=retry_after_s
            )
        return web.Response(text="ok")

    monkeypatch.setattr(_Run, "_exchange", exchange)
    call = Call("openai", "chat", "req", TraceContext("a" * 32, "b" * 16, None))
    started = time.monotonic()
    response = asyncio.run(resilience.serve(None, call, "openai", a, {"model": "a"}, {}))  # type: ignore[arg-type]
    assert response.status == 200
    return sent, time.monotonic() - started, call.attributes


def test_retry_after_within_the_cap_is_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, elapsed, attributes = _serve_with_fake_upstream(monkeypatch, 0.1)
    assert sent == ["m1", "m1", "m1", "m1", "m2"]
    assert elapsed >= 0.3  # three waits of at least the provider's 0.1 s
    assert attributes["bastion.gateway.fallback_alias"] == "b"


def test_retry_after_above_the_cap_moves_on_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, elapsed, attributes = _serve_with_fake_upstream(monkeypatch, 30.0)
    assert sent == ["m1", "m2"]  # the deployment is given up, not retried in 1 s
    assert elapsed < 0.5
    assert [a["outcome"] for a in attributes["bastion.gateway.attempts"]] == ["error", "ok"]
