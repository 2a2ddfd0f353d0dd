"""Retries, timeouts, fallbacks, context-window fallback and circuit breakers, end to end:
a real simulator and a real gateway on loopback, with this module's own ``bastion.yaml``."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from bastion.providers.simulator import SimulatorConfig, SimulatorServer
from tests.gateway.conftest import Gateway, Process, create_key, free_port

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
  sim-anthropic: {{type: anthropic, base_url: "{sim}"}}
  backup: {{type: openai, base_url: "{sim}/v1"}}
  revivable: {{type: openai, base_url: "http://127.0.0.1:{revivable}/v1"}}
prices:
  tiny-window: {{max_input_tokens: 40}}
  big-window: {{max_input_tokens: 100000}}
models:
  healthy: {{deployments: [{{provider: backup, model: sim-small}}]}}
  flaky:
    deployments: [{{provider: sim, model: "sim-small~error_rate=0.3~faults=500,503,429"}}]
    retries: 6
  limited:
    deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=429~seed=101"}}]
    retries: 1
  rejecting:
    deployments: [{{provider: sim, model: "sim-small~bogus=1"}}]
    retries: 3
    fallbacks: [healthy]
  dead:
    deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=500,503"}}]
    retries: 1
    fallbacks: [healthy]
  dead-claude:
    deployments: [{{provider: sim-anthropic, model: "sim-large~error_rate=1~faults=503"}}]
    fallbacks: [healthy]
  stalled:
    deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=timeout~seed=102"}}]
    timeout: {{first_byte_s: 0.3}}
    fallbacks: [healthy]
  hung:
    deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=timeout~seed=103"}}]
    timeout: {{first_byte_s: 0.4}}
    breaker: {{error_rate: 0.5, window_s: 30, min_requests: 2, cooldown_s: 300}}
    fallbacks: [healthy]
  recovering:
    deployments: [{{provider: revivable, model: sim-small}}]
    timeout: {{connect_s: 0.5}}
    breaker: {{error_rate: 0.5, window_s: 30, min_requests: 2, cooldown_s: 1}}
    fallbacks: [healthy]
  trickle:
    deployments: [{{provider: sim, model: "sim-small~tps=4~seed=105"}}]
    timeout: {{idle_s: 0.1}}
    retries: 2
    fallbacks: [healthy]
  windowed:
    deployments: [{{provider: sim, model: tiny-window}}]
    fallbacks: [roomy]
  roomy: {{deployments: [{{provider: backup, model: big-window}}]}}
  chaos:
    deployments:
      - provider: sim
        model: "sim-small~error_rate=0.3~faults=500,503,429,reset,timeout~timeout_s=5"
    timeout: {{first_byte_s: 0.5}}
    fallbacks: [chaos-backup]
  chaos-backup:
    deployments: [{{provider: backup, model: "sim-small~seed=104"}}]
    retries: 2
gateway: {{read_timeout_s: 5, retry_after_max_s: 1.5}}
"""

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    home = tmp_path_factory.mktemp("resilience-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    sim_port, gw_port, revivable_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = Process(
        ["simulate", "--port", str(sim_port), "--seed", "11"],
        env,
        home / "simulator.log",
        sim_url + "/healthz",
    )
    config = home / "bastion.yaml"
    config.write_text(CONFIG.format(sim=sim_url, revivable=revivable_port))
    key = create_key(env, config)
    url = f"http://127.0.0.1:{gw_port}"
    server = Process(
        ["serve", "--port", str(gw_port), "-c", str(config)],
        env,
        home / "serve.log",
        url + "/readyz",
    )
    try:
        yield Gateway(url=url, key=key, simulator_url=sim_url, home=home), revivable_port
    finally:
        server.stop()
        simulator.stop()


@pytest.fixture(scope="module")
def gateway(gw: tuple[Gateway, int]) -> Gateway:
    return gw[0]


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)


def model_count(gateway: Gateway, model: str) -> int:
    return int(gateway.simulator_stats()["models"].get(model, 0))


def attempts(span: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = span["attributes"]["bastion.gateway.attempts"]
    return found


def metrics(gateway: Gateway) -> str:
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_transient_failures_are_retried(gateway: Gateway) -> None:
    model = "sim-small~error_rate=0.3~faults=500,503,429"
    before = model_count(gateway, model)
    client = sdk(gateway)
    retried = 0
    for _ in range(20):
        raw = client.chat.completions.with_raw_response.create(model="flaky", messages=MESSAGES)
        assert raw.parse().choices[0].message.content
        tried = attempts(gateway.span(raw.headers["x-bastion-trace-id"]))
        assert tried[-1]["outcome"] == "ok"
        if len(tried) > 1:
            retried += 1
            assert {a["outcome"] for a in tried[:-1]} == {"error"}
            assert {a["status"] for a in tried[:-1]} <= {500, 503, 429}
    assert retried > 0
    assert model_count(gateway, model) - before > 20  # the retries reached the provider


def test_retry_after_is_honoured_then_the_error_is_returned(gateway: Gateway) -> None:
    model = "sim-small~error_rate=1~faults=429~seed=101"
    before = model_count(gateway, model)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        sdk(gateway).chat.completions.create(model="limited", messages=MESSAGES)
    assert time.monotonic() - started >= 1.0  # the simulator's Retry-After: 1 (cap 1.5 s)
    assert model_count(gateway, model) - before == 2  # one retry, as configured


def test_client_errors_are_neither_retried_nor_fallen_back(gateway: Gateway) -> None:
    before = gateway.simulator_stats()["requests"]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.with_raw_response.create(model="rejecting", messages=MESSAGES)
    assert gateway.simulator_stats()["requests"] - before == 1  # no retry, no fallback
    span = gateway.span(caught.value.response.headers["x-bastion-trace-id"])
    assert [a["outcome"] for a in attempts(span)] == ["rejected"]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_falls_back_to_another_alias(gateway: Gateway, stream: bool) -> None:
    client = sdk(gateway)
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="dead", messages=MESSAGES, stream=True
        ) as response:
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
            )
            trace_id = response.headers["x-bastion-trace-id"]
    else:
        raw = client.chat.completions.with_raw_response.create(model="dead", messages=MESSAGES)
        text = raw.parse().choices[0].message.content or ""
        trace_id = raw.headers["x-bastion-trace-id"]
    assert text
    span = gateway.span(trace_id)
    tried = attempts(span)
    assert [(a["alias"], a["outcome"]) for a in tried] == [
        ("dead", "error"),
        ("dead", "error"),
        ("healthy", "ok"),
    ]
    assert tried[-1]["provider"] == "backup"
    assert span["attributes"]["bastion.gateway.fallback_alias"] == "healthy"
    assert span["attributes"]["bastion.gateway.deployment"] == "backup/sim-small"
    assert span["provider"] == "backup"
    assert span["status_code"] != 2


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_client_falls_back_across_formats(gateway: Gateway, stream: bool) -> None:
    client = claude(gateway)
    if stream:
        with client.messages.stream(model="dead-claude", max_tokens=50, messages=MESSAGES) as s:
            text = "".join(s.text_stream)
            message = s.get_final_message()
        assert message.stop_reason
    else:
        created = client.messages.create(model="dead-claude", max_tokens=50, messages=MESSAGES)
        text = "".join(b.text for b in created.content if b.type == "text")
    assert text


def test_stream_falls_back_when_the_first_byte_times_out(gateway: Gateway) -> None:
    started = time.monotonic()
    with sdk(gateway).chat.completions.with_streaming_response.create(
        model="stalled", messages=MESSAGES, stream=True
    ) as response:
        chunks = list(response.parse())
        trace_id = response.headers["x-bastion-trace-id"]
    assert time.monotonic() - started < 3
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    tried = attempts(gateway.span(trace_id))
    assert [(a["alias"], a["outcome"], a["error_class"]) for a in tried] == [
        ("stalled", "error", "upstream_timeout"),
        ("healthy", "ok", None),
    ]
    assert tried[0]["latency_ms"] >= 300


def test_an_idle_stream_is_cut_with_an_error_event_and_never_retried(gateway: Gateway) -> None:
    before = gateway.simulator_stats()["requests"]
    request = urllib.request.Request(
        gateway.url + "/v1/chat/completions",
        data=orjson.dumps({"model": "trickle", "messages": MESSAGES, "stream": True}),
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
        trace_id = response.headers["x-bastion-trace-id"]
    assert '"delta"' in text  # the first events went out …
    assert '"code":"upstream_interrupted"' in text  # … then the explicit error event
    assert "[DONE]" not in text
    assert gateway.simulator_stats()["requests"] - before == 1
    span = gateway.span(trace_id)
    assert span["error_class"] == "upstream_stream_interrupted"
    assert [(a["alias"], a["outcome"]) for a in attempts(span)] == [
        ("trickle", "error_after_first_byte")
    ]


def test_breaker_opens_and_a_dead_deployment_is_no_longer_waited_on(gateway: Gateway) -> None:
    client = sdk(gateway)
    label = "sim/sim-small~error_rate=1~faults=timeout~seed=103"
    slow = []
    for _ in range(2):  # min_requests: 2, both time out (0.4 s) then fall back
        started = time.monotonic()
        client.chat.completions.create(model="hung", messages=MESSAGES)
        slow.append(time.monotonic() - started)
    assert min(slow) >= 0.4
    fast = []
    for _ in range(5):
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(model="hung", messages=MESSAGES)
        fast.append(time.monotonic() - started)
    assert max(fast) < 0.3  # skipped at once, never waiting for the first-byte timeout
    tried = attempts(gateway.span(raw.headers["x-bastion-trace-id"]))
    assert [(a["deployment"], a["outcome"]) for a in tried] == [
        (label, "skipped_breaker_open"),
        ("backup/sim-small", "ok"),
    ]
    text = metrics(gateway)
    assert (
        f'bastion_gateway_breaker_transitions_total{{deployment="{label}",to="open"}} 1.0' in text
    )
    assert f'bastion_gateway_breaker_state{{deployment="{label}"}} 2.0' in text
    # The transition is also kept as an event span, listed by the trace API.
    opened = gateway.events(
        "bastion.breaker.transition", where={"bastion.breaker.deployment": label}
    )
    assert [(e["attributes"]["bastion.breaker.from"], e["attributes"]["bastion.breaker.to"])
            for e in opened] == [("closed", "open")]  # fmt: skip
    assert opened[0]["attributes"]["bastion.breaker.remote"] is False


def test_breaker_half_open_probe_closes_it_after_recovery(gw: tuple[Gateway, int]) -> None:
    gateway, port = gw
    client = sdk(gateway)
    opened: Any = None
    for _ in range(3):  # nothing listens yet: connection refused, fall back
        raw = client.chat.completions.with_raw_response.create(
            model="recovering", messages=MESSAGES
        )
        span = gateway.span(raw.headers["x-bastion-trace-id"])
        opened = opened or span["attributes"].get("bastion.gateway.breaker_transitions")
    assert opened == [
        {
            "deployment": "revivable/sim-small",
            "from": "closed",
            "to": "open",
            "reason": opened[0]["reason"],
        }
    ]
    assert attempts(span)[0]["outcome"] == "skipped_breaker_open"
    with SimulatorServer(SimulatorConfig(seed=3), port=port):
        time.sleep(1.1)  # the cooldown
        raw = client.chat.completions.with_raw_response.create(
            model="recovering", messages=MESSAGES
        )
        span = gateway.span(raw.headers["x-bastion-trace-id"])
        assert [
            (t["from"], t["to"]) for t in span["attributes"]["bastion.gateway.breaker_transitions"]
        ] == [
            ("open", "half_open"),
            ("half_open", "closed"),
        ]
        assert span["provider"] == "revivable"
        raw = client.chat.completions.with_raw_response.create(
            model="recovering", messages=MESSAGES
        )
        assert gateway.span(raw.headers["x-bastion-trace-id"])["provider"] == "revivable"
    text = metrics(gateway)
    assert 'bastion_gateway_breaker_state{deployment="revivable/sim-small"} 0.0' in text


def test_a_prompt_too_long_for_the_window_goes_to_a_larger_model(gateway: Gateway) -> None:
    client = sdk(gateway)
    short = client.chat.completions.with_raw_response.create(model="windowed", messages=MESSAGES)
    assert gateway.span(short.headers["x-bastion-trace-id"])["provider"] == "sim"
    long_messages: list[Any] = [
        {"role": "user", "content": "please summarise " + "lorem ipsum " * 40}
    ]
    raw = client.chat.completions.with_raw_response.create(model="windowed", messages=long_messages)
    assert raw.parse().choices[0].message.content
    span = gateway.span(raw.headers["x-bastion-trace-id"])
    assert span["provider"] == "backup"
    assert [(a["model"], a["outcome"]) for a in attempts(span)] == [
        ("tiny-window", "skipped_context_window"),
        ("big-window", "ok"),
    ]
    assert span["attributes"]["bastion.gateway.estimated_input_tokens"] > 40


def test_chaos_primary_fails_30_percent_clients_barely_notice(gateway: Gateway) -> None:
    total, concurrency = 2000, 24
    backup_before = model_count(gateway, "sim-small~seed=104")

    async def run() -> list[int]:
        statuses: list[int] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)
        headers = {"Authorization": f"Bearer {gateway.key}"}
        body = {"model": "chaos", "messages": MESSAGES, "max_tokens": 8}

        async def worker(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                queue.get_nowait()
                try:
                    async with session.post(
                        gateway.url + "/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        await response.read()
                        statuses.append(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    statuses.append(-1)  # counted as a failure the client saw

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return statuses

    started = time.monotonic()
    statuses = asyncio.run(run())
    elapsed = time.monotonic() - started
    ok = sum(1 for s in statuses if s == 200)
    assert len(statuses) == total
    assert ok / total >= 0.999, {s: statuses.count(s) for s in set(statuses)}
    fallbacks = model_count(gateway, "sim-small~seed=104") - backup_before
    # The ~30% that failed went to the backup (more when a loaded machine slows the primary
    # past its first-byte timeout).
    assert 0.2 * total < fallbacks < 0.6 * total, fallbacks
    assert elapsed < 60
