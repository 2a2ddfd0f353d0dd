"""Budgets and rate limits through a real gateway process (in-memory state): 429s in the
OpenAI and Anthropic shapes raised by the SDKs as RateLimitError, degrading to a cheaper alias,
budget warnings emitted once, and admission decisions on the span."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.gateway.conftest import Gateway, Process, create_key, free_port

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
prices:
  sim-small: {{input_usd_per_mtok: 1000, output_usd_per_mtok: 1000}}
  sim-large: {{input_usd_per_mtok: 0.01, output_usd_per_mtok: 0.01}}
models:
  chat: {{deployments: [{{provider: sim, model: sim-small}}]}}
  chat-cheap: {{deployments: [{{provider: sim, model: sim-large}}]}}
budgets:
  - {{scope: feature, match: blocked, period: day, limit_usd: 0.001, on_exceed: block}}
  - scope: feature
    match: degraded
    period: day
    limit_usd: 0.001
    on_exceed: {{degrade_to: chat-cheap}}
  - {{scope: user, match: watched, period: month, limit_usd: 0.2}}
rate_limits:
  - {{scope: team, match: tiny, rpm: 2}}
{extra}
"""


def start_gateway(
    home: Path,
    config: str,
    *,
    env_extra: dict[str, str] | None = None,
    sim_url: str | None = None,
) -> tuple[Gateway, list[Process]]:
    """A simulator (unless ``sim_url`` is given) and a gateway process with ``config``
    (formatted with ``sim``); returns the gateway and the processes to stop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    processes: list[Process] = []
    if sim_url is None:
        sim_port = free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        processes.append(
            Process(
                ["simulate", "--port", str(sim_port), "--seed", "5"],
                env,
                home / "simulator.log",
                sim_url + "/healthz",
            )
        )
    path = home / "bastion.yaml"
    path.write_text(config.format(sim=sim_url))
    env.update(env_extra or {})
    key = create_key(env, path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        processes.append(
            Process(["serve", "--port", str(port), "-c", str(path)], env, home / "serve.log",
                    url + "/readyz")
        )  # fmt: skip
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return Gateway(url=url, key=key, simulator_url=sim_url, home=home), processes


def metric(gateway: Gateway, line_start: str) -> float | None:
    """The value of the first ``/metrics`` sample whose line starts with ``line_start``."""
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("limits-home")
    gw, processes = start_gateway(home, CONFIG.replace("{extra}", ""))
    try:
        yield gw
    finally:
        for process in reversed(processes):
            process.stop()


def openai_client(gateway: Gateway, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0, default_headers=headers
    )


def anthropic_client(gateway: Gateway, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gateway.url, api_key=gateway.key, max_retries=0, default_headers=headers
    )


def ask(client: openai.OpenAI, model: str = "chat") -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=8
    )


def test_rate_limit_is_an_openai_rate_limit_error(gateway: Gateway) -> None:
    with openai_client(gateway, **{"x-bastion-team": "tiny"}) as client:
        if time.time() % 60 > 50:  # keep the three calls inside one minute
            time.sleep(61 - time.time() % 60)
        ask(client)
        ask(client)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client)
    error = caught.value
    assert error.status_code == 429
    body = error.body
    assert isinstance(body, dict)
    assert body["code"] == "rate_limit_exceeded"
    assert body["type"] == "rate_limit_error"
    assert "team 'tiny' may send 2 requests per minute" in body["message"]
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    # Another team is not limited by this rule.
    with openai_client(gateway, **{"x-bastion-team": "other"}) as client:
        for _ in range(3):
            ask(client)
    span = gateway.span(error.response.headers["x-bastion-trace-id"])
    assert span["error_class"] == "rate_limited"
    assert span["attributes"]["bastion.ratelimit.decision"] == "rejected"
    assert span["attributes"]["bastion.ratelimit.rule"] == "rate_limits[0] team=tiny"
    assert span["attributes"]["bastion.team"] == "tiny"


def test_budget_block_is_an_anthropic_rate_limit_error(gateway: Gateway) -> None:
    with anthropic_client(gateway, **{"x-bastion-feature": "blocked"}) as client:
        first = client.messages.create(
            model="chat", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
        )
        assert first.content
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(
                model="chat", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
            )
    error = caught.value
    assert error.status_code == 429
    body = error.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    message = body["error"]["message"]
    assert "budget exceeded: feature 'blocked'" in message
    assert "daily budget of $0.00" in message  # $0.001, shown to the cent
    assert "budgets[0]" in message
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 86400
    assert retry_after == pytest.approx(86400 - time.time() % 86400, abs=30)
    span = gateway.span(error.response.headers["x-bastion-trace-id"])
    assert span["error_class"] == "budget_exceeded"
    assert span["attributes"]["bastion.budget.decision"] == "blocked"


def test_budget_block_in_openai_shape(gateway: Gateway) -> None:
    with (
        openai_client(gateway, **{"x-bastion-feature": "blocked"}) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        ask(client)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "budget_exceeded"
    assert "budget exceeded: feature 'blocked'" in body["message"]


def test_degrade_serves_the_cheaper_alias(gateway: Gateway) -> None:
    with openai_client(gateway, **{"x-bastion-feature": "degraded"}) as client:
        first = ask(client)
        assert first.model.startswith("sim-small")
        second = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hello there"}], max_tokens=8
        )
        answer = second.parse()
    assert answer.model.startswith("sim-large")
    span = gateway.span(second.headers["x-bastion-trace-id"])
    attributes = span["attributes"]
    assert attributes["bastion.budget.decision"] == "degraded"
    assert attributes["bastion.budget.degraded_from"] == "chat"
    assert attributes["bastion.budget.degraded_to"] == "chat-cheap"
    assert span["request_model"] == "chat"
    assert span["response_model"].startswith("sim-large")
    assert attributes["bastion.budget.cost_usd"] < 0.0001


def test_warnings_at_50_75_90_emitted_once(gateway: Gateway) -> None:
    def warnings() -> list[str]:
        log = (gateway.home / "serve.log").read_text()
        return [line for line in log.splitlines() if "value='watched'" in line]

    with openai_client(gateway, **{"x-bastion-user": "watched"}) as client:
        spent = 0.0
        while spent < 0.185:  # the $0.20 budget, past 90% and short of 100%
            usage = ask(client).usage
            assert usage is not None
            spent += (usage.prompt_tokens + usage.completion_tokens) * 0.001
    deadline = time.monotonic() + 10
    while len(warnings()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = warnings()
    assert [line.split("threshold=")[1].split()[0] for line in lines] == ["50%", "75%", "90%"]
    assert all("event=budget_threshold scope=user" in line for line in lines)
    for threshold in ("0.5", "0.75", "0.9"):
        value = metric(
            gateway,
            "bastion_gateway_budget_warnings_total{"
            f'period="month",scope="user",threshold="{threshold}"}}',
        )
        assert value == 1.0
    # Each threshold is also kept as an event span, listed by the trace API.
    events = [
        e["attributes"]
        for e in gateway.events(
            "bastion.budget.threshold", count=3, where={"bastion.budget.value": "watched"}
        )
    ]
    assert sorted(e["bastion.budget.threshold_percent"] for e in events) == [50, 75, 90]
    assert {e["bastion.budget.scope"] for e in events} == {"user"}
