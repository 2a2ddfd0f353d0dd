"""Requests that name a registry prompt, through the official SDKs and a real gateway process."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.gateway.conftest import Gateway

GREET = {
    "name": "greet",
    "model": "chat",
    "params": {"temperature": 0.25, "max_tokens": 40},
    "variables": {"x": {"type": "string"}, "n": {"type": "integer", "default": 1}},
    "messages": [
        {"role": "system", "content": "You are terse ({{ n }})."},
        {"role": "user", "content": "Reply with: {{ x }}"},
    ],
}
NOTE = {  # a text prompt served by an Anthropic-format deployment, with a partial
    "name": "note",
    "model": "claude",
    "variables": {"x": {"type": "string"}},
    "text": '{% include "prefix" %}\nReply with: {{ x }}',
}
PREFIX = {"name": "prefix", "text": "Context for {{ x }}.", "variables": {"x": {"type": "string"}}}
NOMODEL = {"name": "nomodel", "text": "Reply with: {{ x }}", "variables": {"x": {"type": "string"}}}


def api(gateway: Gateway, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        gateway.url + path,
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from None


def deploy(gateway: Gateway, name: str, version: int, label: str = "production") -> None:
    api(gateway, "PUT", f"/api/v1/prompts/{name}/labels/{label}", {"version": version})


def openai_client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def anthropic_client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)


def wait_until(check: Any, timeout: float = 5.0) -> float:
    """Seconds until ``check()`` is true (polled), or an AssertionError after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def registry(gateway: Gateway) -> Gateway:
    """The prompts above pushed and labelled production; the gateway has picked them up."""
    api(gateway, "POST", "/api/v1/prompts", {"prompts": [GREET, NOTE, PREFIX, NOMODEL]})
    for name in ("greet", "note", "nomodel"):
        deploy(gateway, name, 1)

    def served() -> bool:
        try:
            ask_openai(gateway, {"name": "nomodel", "variables": {"x": "up"}}, model="chat")
        except openai.NotFoundError:
            return False
        return True

    wait_until(served)
    return gateway


def ask_openai(gateway: Gateway, prompt: dict[str, Any], **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": "", "messages": [], **kwargs}
    return (
        openai_client(gateway)
        .chat.completions.with_raw_response.create(extra_body={"prompt": prompt}, **params)
        .parse()
    )


def test_openai_body_form_renders_with_the_versions_model_and_params(registry: Gateway) -> None:
    raw = openai_client(registry).chat.completions.with_raw_response.create(
        model="",
        messages=[],
        temperature=0.5,  # the request's own parameter wins over the prompt's 0.25
        extra_body={"prompt": {"name": "greet", "variables": {"x": "hello there", "n": 3}}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello there"
    span = registry.span(raw.headers["x-bastion-trace-id"])
    assert (span["prompt_name"], span["prompt_version"]) == ("greet", 1)
    assert span["request_model"] == "chat"
    assert span["provider"] == "sim"
    attributes = span["attributes"]
    assert attributes["bastion.prompt.label"] == "production"
    assert attributes["bastion.prompt.hash"].startswith("sha256:")
    sent = orjson.loads(span["input"])
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse (3)."},
        {"role": "user", "content": "Reply with: hello there"},
    ]
    assert (sent["temperature"], sent["max_tokens"], sent["model"]) == (0.5, 40, "chat")
    assert "prompt" not in sent
    usage = api(registry, "GET", "/api/v1/prompts/greet/usage")
    (v1,) = [v for v in usage["versions"] if v["version"] == 1]
    assert span["trace_id"] in v1["recent_trace_ids"]
    assert [d["label"] for d in v1["deployments"]] == ["production"]


def test_openai_header_form_with_version_and_streaming(registry: Gateway) -> None:
    stream = openai_client(registry).chat.completions.create(
        model="",
        messages=[],
        stream=True,
        extra_headers={
            "x-bastion-prompt": "greet:1",
            "x-bastion-prompt-variables": '{"x": "from headers"}',
        },
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "from headers"


def test_anthropic_sdk_text_prompt_with_partial_on_an_anthropic_deployment(
    registry: Gateway,
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="missing variable 'x'"):
        anthropic_client(registry).messages.create(
            model="",
            max_tokens=64,
            messages=[],
            extra_headers={"x-bastion-prompt": "note@production"},
        )
    raw_ok = anthropic_client(registry).messages.with_raw_response.create(
        model="",
        max_tokens=64,
        messages=[],
        extra_body={"prompt": {"name": "note", "variables": {"x": "bonjour"}}},
    )
    message = raw_ok.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "bonjour"
    span = registry.span(raw_ok.headers["x-bastion-trace-id"])
    assert (span["prompt_name"], span["prompt_version"], span["request_model"]) == (
        "note",
        1,
        "claude",
    )
    sent = orjson.loads(span["input"])
    assert sent["max_tokens"] == 64
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Context for bonjour.\nReply with: bonjour"}],
        }
    ]


def test_anthropic_client_on_an_openai_deployment_uses_prompt_system(registry: Gateway) -> None:
    message = anthropic_client(registry).messages.create(
        model="",
        max_tokens=32,
        messages=[],
        extra_body={"prompt": {"name": "greet", "variables": {"x": "crossed"}}},
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "crossed"


def test_a_label_move_is_served_within_two_seconds(registry: Gateway) -> None:
    first = {"name": "deployed", "model": "chat", "text": "Reply with: blue"}
    second = {"name": "deployed", "model": "chat", "text": "Reply with: green"}
    api(registry, "POST", "/api/v1/prompts", {"prompts": [first]})
    api(registry, "POST", "/api/v1/prompts", {"prompts": [second]})
    deploy(registry, "deployed", 1)

    def answer() -> str | None:
        try:
            return str(ask_openai(registry, {"name": "deployed"}).choices[0].message.content)
        except openai.NotFoundError:
            return None

    wait_until(lambda: answer() == "blue")
    deploy(registry, "deployed", 2)
    assert wait_until(lambda: answer() == "green", timeout=5.0) < 2.5
    api(registry, "POST", "/api/v1/prompts/deployed/labels/production/rollback", {})
    assert wait_until(lambda: answer() == "blue", timeout=5.0) < 2.5
    # An explicit version is served whatever the label says.
    pinned = ask_openai(registry, {"name": "deployed", "version": 2})
    assert pinned.choices[0].message.content == "green"


def test_unlabelled_prompts_by_version_and_latest_just_after_a_push(registry: Gateway) -> None:
    def draft(word: str) -> None:
        spec = {"name": "draft", "model": "chat", "text": f"Reply with: {word}"}
        api(registry, "POST", "/api/v1/prompts", {"prompts": [spec]})

    def latest() -> str:
        answer = ask_openai(registry, {"name": "draft", "label": "latest"})
        return str(answer.choices[0].message.content)

    draft("first")  # asked for at once: the unknown name triggers a refresh, no 404
    assert latest() == "first"
    draft("second")  # a known name: the next poll (about a second) serves the new version
    assert wait_until(lambda: latest() == "second") < 2.5
    # Version 1 of a prompt without labels is not held in memory: fetched once, then kept.
    old = ask_openai(registry, {"name": "draft", "version": 1})
    assert old.choices[0].message.content == "first"


def raw_post(gateway: Gateway, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        gateway.url + path,
        data=orjson.dumps(body),
        method="POST",
        headers={"Authorization": f"Bearer {gateway.key}", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read()) | {
                "_trace": response.headers["x-bastion-trace-id"]
            }
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read()) | {
                "_trace": exc.headers["x-bastion-trace-id"]
            }


@pytest.mark.parametrize(
    ("body", "headers", "status", "param", "message"),
    [
        (
            {
                "prompt": {"name": "greet", "variables": {"x": "a"}},
                "messages": [{"role": "user", "content": "hi"}],
            },
            {},
            400,
            "messages",
            "give either messages or a prompt ('greet' in the body field 'prompt'), not both",
        ),
        (
            {"prompt": {"name": "greet", "variables": {}}},
            {},
            400,
            "prompt.variables",
            "prompt 'greet' version 1: missing variable 'x'",
        ),
        (
            {"prompt": {"name": "greet", "variables": {"x": "a", "y": 1}}},
            {},
            400,
            "prompt.variables",
            "unexpected variable 'y'",
        ),
        (
            {"prompt": {"name": "greet", "variables": {"x": 5}}},
            {},
            400,
            "prompt.variables",
            "variable 'x' must be string, got int",
        ),
        ({"prompt": {"name": "nope"}}, {}, 404, "prompt", "no prompt 'nope' in this project"),
        (
            {"prompt": {"name": "greet", "label": "staging", "variables": {"x": "a"}}},
            {},
            404,
            "prompt",
            "prompt 'greet' has no label 'staging' (labels: production)",
        ),
        (
            {"prompt": {"name": "greet", "version": 9, "variables": {"x": "a"}}},
            {},
            404,
            "prompt",
            "prompt 'greet' has no version 9 (newest is 1)",
        ),
        (
            {"messages": []},
            {"x-bastion-prompt": "greet", "x-bastion-prompt-variables": "[1]"},
            400,
            "x-bastion-prompt-variables",
            "x-bastion-prompt-variables must be a JSON object",
        ),
        (
            {"prompt": {"name": "nomodel", "variables": {"x": "a"}}},
            {},
            400,
            "model",
            "prompt 'nomodel' version 1 names no model: give one in the request",
        ),
        (
            {"prompt": {"name": "greet"}},
            {"x-bastion-prompt": "greet"},
            400,
            "prompt",
            "name the prompt in the body or in the x-bastion-prompt header, not both",
        ),
    ],
)
def test_openai_errors_name_the_problem_and_are_recorded(
    registry: Gateway,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    param: str,
    message: str,
) -> None:
    got, out = raw_post(
        registry, "/v1/chat/completions", body, {"Content-Type": "application/json", **headers}
    )
    assert got == status, out
    assert out["error"]["param"] == param
    assert message in out["error"]["message"]
    span = registry.span(out["_trace"])
    assert span["status_code"] == 2
    assert message in span["attributes"]["error.message"]
    if "prompt" in body and not headers:  # a reference that parsed is named on the span
        assert span["prompt_name"] == body["prompt"]["name"]


def test_anthropic_errors_in_anthropic_shape(registry: Gateway) -> None:
    body = {
        "max_tokens": 10,
        "system": "be brief",
        "messages": [],
        "prompt": {"name": "greet", "variables": {"x": "a"}},
    }
    status, out = raw_post(
        registry,
        "/v1/messages",
        body,
        {"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    assert status == 400
    assert out["type"] == "error"
    assert out["error"]["type"] == "invalid_request_error"
    assert "give either system or a prompt ('greet'" in out["error"]["message"]
    with pytest.raises(anthropic.NotFoundError, match="no prompt 'missing'"):
        anthropic_client(registry).messages.create(
            model="claude",
            max_tokens=10,
            messages=[],
            extra_body={"prompt": {"name": "missing"}},
        )
