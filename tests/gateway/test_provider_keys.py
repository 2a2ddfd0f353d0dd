"""`bastion gateway` on its own: provider keys come from the environment and never leak.

A simulator that demands an API key stands in for a real provider; the gateway runs as a
separate process with DEBUG logging, and afterwards neither its log, nor its database, nor
anything it answered holds the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import orjson
import pytest

from bastion.providers.simulator import SimulatorConfig, SimulatorServer
from tests.gateway.conftest import Process, free_port

SECRET = "sk-provider-secret-5f3a9c"

CONFIG = """
log_level: DEBUG
providers:
  secured: {{type: openai, base_url: "{sim}/v1", api_key_env: SIM_PROVIDER_KEY}}
  secured-anthropic: {{type: anthropic, base_url: "{sim}", api_key_env: SIM_PROVIDER_KEY}}
  forgotten: {{type: openai, base_url: "{sim}/v1", api_key_env: SIM_KEY_NOT_SET}}
models:
  keyed: {{deployments: [{{provider: secured, model: sim-small}}]}}
  keyed-claude: {{deployments: [{{provider: secured-anthropic, model: sim-large}}]}}
  unkeyed: {{deployments: [{{provider: forgotten, model: sim-small}}]}}
"""


@dataclass
class LoneGateway:
    url: str
    key: str
    home: Path
    log: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def lone_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneGateway]:
    home = tmp_path_factory.mktemp("lone-gateway")
    with SimulatorServer(SimulatorConfig(api_key=SECRET, seed=3)) as simulator:
        config = home / "bastion.yaml"
        config.write_text(CONFIG.format(sim=simulator.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
        env.pop("SIM_KEY_NOT_SET", None)
        env["BASTION_HOME"] = str(home)
        key = subprocess.run(
            [sys.executable, "-m", "bastion.cli.main", "keys", "create", "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = home / "gateway.log"
        gateway = Process(
            ["gateway", "--port", str(port), "--with-simulator"],
            {**env, "SIM_PROVIDER_KEY": SECRET},
            log,
            url + "/readyz",
        )
        try:
            yield LoneGateway(url=url, key=key, home=home, log=log, env=env)
        finally:
            gateway.stop()


@pytest.fixture
def oai(lone_gateway: LoneGateway) -> Iterator[openai.OpenAI]:
    url = lone_gateway.url + "/v1"
    with openai.OpenAI(base_url=url, api_key=lone_gateway.key, max_retries=0) as client:
        yield client


@pytest.fixture
def claude(lone_gateway: LoneGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=lone_gateway.url, api_key=lone_gateway.key) as client:
        yield client


def test_key_from_the_environment_reaches_both_provider_kinds(
    lone_gateway: LoneGateway, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    reply = oai.chat.completions.create(
        model="keyed", messages=[{"role": "user", "content": "Reply with: authorised"}]
    )
    assert reply.choices[0].message.content == "authorised"
    message = claude.messages.create(
        model="keyed-claude",
        max_tokens=50,
        messages=[{"role": "user", "content": "Reply with: also authorised"}],
    )
    assert message.content[0].text == "also authorised"  # type: ignore[union-attr]


def test_unset_key_is_a_502_naming_the_variable_not_the_provider_message(
    lone_gateway: LoneGateway, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(model="unkeyed", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert "SIM_KEY_NOT_SET" in caught.value.message
    assert "rejected the gateway's credentials" in caught.value.message


def test_gateway_alone_serves_the_simulator_models_and_no_read_api(
    lone_gateway: LoneGateway, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    assert {"sim-small", "sim-large", "keyed"} <= {m.id for m in oai.models.list()}
    small = oai.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "Reply with: small"}]
    )
    assert small.choices[0].message.content == "small"
    large = claude.messages.create(
        model="sim-large", max_tokens=20, messages=[{"role": "user", "content": "Reply with: big"}]
    )
    assert large.content[0].text == "big"  # type: ignore[union-attr]
    request = urllib.request.Request(
        lone_gateway.url + "/api/v1/traces",
        headers={"Authorization": f"Bearer {lone_gateway.key}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    caught.value.close()
    assert caught.value.code == 404


def test_the_key_is_never_logged_stored_or_returned(
    lone_gateway: LoneGateway, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    oai.chat.completions.create(
        model="keyed", messages=[{"role": "user", "content": "Reply with: check"}]
    )
    deadline = time.monotonic() + 10
    while True:  # spans are written off the request path, a moment later
        traces = subprocess.run(
            [
                sys.executable,
                "-m",
                "bastion.cli.main",
                "traces",
                "list",
                "--json",
                "--limit",
                "100",
            ],
            env=lone_gateway.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if orjson.loads(traces) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert orjson.loads(traces)  # the gateway process stored its spans
    assert SECRET not in traces
    assert SECRET not in lone_gateway.log.read_text()
    for path in lone_gateway.home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
