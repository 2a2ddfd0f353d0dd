"""Named prompts render under their project's template limits, in a real gateway process.

A render past a limit is a 422 in the API's own error shape (so the official SDKs raise their
`UnprocessableEntityError`), and a hostile template never holds the event loop: the gateway
keeps answering while such renders are refused.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.gateway.conftest import CONFIG, Gateway, free_port, running_gateway
from tests.gateway.test_prompt_requests import api, deploy, wait_until

# The gateway takes 64 kB requests (conftest's CONFIG), so renders may be 64 kB long.
LIMITS = """
templates: {cpu_ms: 50}
projects:
  roomy: {template_cpu_ms: 60000}
"""
ITERATE = "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"
PROMPTS: list[dict[str, Any]] = [
    {  # up to 10^9 loop iterations that print nothing
        "name": "spin",
        "model": "chat",
        "variables": {"s": {"type": "string"}},
        "text": ITERATE + "Reply with: done",
    },
    {  # a million iterations: well past 50 ms of CPU, well within a minute
        "name": "busy",
        "model": "chat",
        "variables": {"s": {"type": "string"}},
        "text": "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}Reply with: busy",
    },
    {
        "name": "flood",
        "model": "chat",
        "variables": {"s": {"type": "string"}},
        "messages": [{"role": "user", "content": "{% for a in s %}{{ s }}{% endfor %}"}],
    },
    {
        "name": "grow",
        "model": "chat",
        "variables": {"s": {"type": "string"}, "n": {"type": "integer"}},
        "text": "Reply with: {{ (s * n)|length }}",
    },
    {
        "name": "tree",
        "model": "chat",
        "variables": {"items": {"type": "list"}},
        "text": "{% for a in items recursive %}{{ loop([a, a]) }}{% endfor %}",
    },
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """conftest's simulator and gateway, with template limits and a project of its own."""
    home = tmp_path_factory.mktemp("budget-home")
    with running_gateway(
        home, lambda sim: CONFIG.format(sim=sim, dead=free_port()) + LIMITS, projects=("roomy",)
    ) as gw:
        yield gw


def roomy(gateway: Gateway) -> Gateway:
    """The same gateway, with the key of project `roomy` (60 s of CPU per render)."""
    key = (gateway.home / "roomy.key").read_text()
    return Gateway(url=gateway.url, key=key, simulator_url=gateway.simulator_url, home=gateway.home)


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def ask(gateway: Gateway, name: str, variables: dict[str, Any]) -> str:
    with client(gateway) as sdk:
        completion = sdk.chat.completions.create(
            model="", messages=[], extra_body={"prompt": {"name": name, "variables": variables}}
        )
    return str(completion.choices[0].message.content)


@pytest.fixture(scope="module")
def registry(gateway: Gateway) -> Gateway:
    """The prompts above in both projects, labelled production and served."""
    for each in (gateway, roomy(gateway)):
        api(each, "POST", "/api/v1/prompts", {"prompts": PROMPTS})
        for prompt in PROMPTS:
            deploy(each, prompt["name"], 1)

    def served() -> bool:
        try:
            return all(
                ask(each, "spin", {"s": "x"}) == "done" for each in (gateway, roomy(gateway))
            )
        except openai.NotFoundError:
            return False

    wait_until(served, timeout=10)
    return gateway


def refused(gateway: Gateway, name: str, variables: dict[str, Any]) -> openai.APIStatusError:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(gateway, name, variables)
    return caught.value


@pytest.mark.parametrize(
    ("name", "variables", "limit", "says"),
    [
        ("spin", {"s": "x" * 1000}, "cpu_ms", "50 ms of CPU time (templates.cpu_ms)"),
        ("flood", {"s": "x" * 1000}, "output", "larger than 65,536 bytes"),
        ("grow", {"s": "x" * 1000, "n": 10**9}, "memory", "more than the 65,536"),
        ("tree", {"items": ["a"]}, "nesting", "recursive loop deeper than 32 levels"),
    ],
)
def test_a_render_past_a_limit_is_a_422_naming_it(
    registry: Gateway, name: str, variables: dict[str, Any], limit: str, says: str
) -> None:
    error = refused(registry, name, variables)
    assert error.status_code == 422
    assert error.code == f"template_{limit}_limit"
    assert says in error.message
    assert f"prompt '{name}' version 1" in error.message
    assert isinstance(error.body, dict)
    assert error.body["type"] == "invalid_request_error"
    assert error.body["param"] == "prompt"


def test_the_same_prompts_render_within_their_limits(registry: Gateway) -> None:
    assert ask(registry, "spin", {"s": "xyz"}) == "done"
    assert ask(registry, "grow", {"s": "ab", "n": 3}) == "6"


def test_anthropic_sdk_gets_its_own_422(registry: Gateway) -> None:
    sdk = anthropic.Anthropic(base_url=registry.url, api_key=registry.key, max_retries=0)
    with sdk, pytest.raises(anthropic.UnprocessableEntityError) as caught:
        sdk.messages.create(
            model="",
            max_tokens=16,
            messages=[],
            extra_body={"prompt": {"name": "flood", "variables": {"s": "y" * 1000}}},
        )
    assert caught.value.status_code == 422
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "larger than 65,536 bytes" in body["error"]["message"]


def test_the_cpu_limit_is_the_projects_own(registry: Gateway) -> None:
    variables = {"s": "x" * 1000}
    assert refused(registry, "busy", variables).code == "template_cpu_ms_limit"
    assert ask(roomy(registry), "busy", variables) == "busy"


def test_the_gateway_keeps_answering_while_hostile_templates_render(registry: Gateway) -> None:
    outcomes: list[int] = []

    def attack() -> None:
        for _ in range(10):
            try:
                ask(registry, "spin", {"s": "x" * 1000})
            except openai.APIStatusError as exc:
                outcomes.append(exc.status_code)

    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for thread in attackers:
        thread.start()
    try:
        for _ in range(20):
            # Unguarded, the first render above never ends and this times out.
            with urllib.request.urlopen(registry.url + "/healthz", timeout=10) as response:
                assert response.status == 200
    finally:
        for thread in attackers:
            thread.join(60)
    assert outcomes == [422] * 30


def test_a_template_the_source_shows_to_be_too_deep_is_refused_at_push(registry: Gateway) -> None:
    deep = {"name": "deep", "text": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"}
    request = urllib.request.Request(
        registry.url + "/api/v1/prompts",
        data=orjson.dumps({"prompts": [deep]}),
        method="POST",
        headers={"Authorization": f"Bearer {registry.key}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    with caught.value as response:
        assert response.code == 400
        assert b"nested deeper than 32 levels" in response.read()
