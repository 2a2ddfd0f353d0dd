"""Bad input and bad upstreams: a 4xx/5xx in the API's own shape, and a span recording it."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import orjson
import pytest

from tests.gateway.conftest import Gateway


def post(
    gateway: Gateway, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        gateway.url + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), orjson.loads(exc.read())


def auth(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key}"}


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


@pytest.mark.parametrize(
    ("body", "status", "needle", "error_class"),
    [
        (b"{not json", 400, "not valid JSON", "invalid_request"),
        (b"[]", 400, "JSON object", "invalid_request"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model", "invalid_request"),
        (b'{"model": "chat", "messages": []}', 400, "messages", "invalid_request"),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 5}',
            400,
            "temperature",
            "invalid_request",
        ),
        (
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "'nope' does not exist",
            "model_not_found",
        ),
    ],
)
def test_bad_requests_name_the_problem_and_are_traced(
    gateway: Gateway, body: bytes, status: int, needle: str, error_class: str
) -> None:
    code, headers, payload = post(gateway, "/v1/chat/completions", body, auth(gateway))
    assert code == status
    assert needle in payload["error"]["message"]
    assert payload["error"]["type"] in ("invalid_request_error",)
    span = gateway.span(headers["x-bastion-trace-id"])
    assert span["error_class"] == error_class
    assert span["status_code"] == 2


def test_sdk_raises_its_usual_exceptions(gateway: Gateway) -> None:
    sdk = client(gateway)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], n=0)
    assert caught.value.param == "n"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        sdk.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "x"}], n=2
        )
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        sdk.embeddings.create(model="claude", input="x")


def test_missing_invalid_and_revoked_keys(gateway: Gateway) -> None:
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "x"}]}'
    code, headers, payload = post(gateway, "/v1/chat/completions", body)
    assert code == 401
    assert "missing API key" in payload["error"]["message"]
    span = gateway.span(headers["x-bastion-trace-id"])
    assert span["error_class"] == "authentication_error"
    assert span["input"] is None  # an unauthenticated body is never stored
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="bst_wrong", max_retries=0
        ).models.list()


def test_oversized_body_is_413(gateway: Gateway) -> None:
    big = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "x" * 70_000}]})
    code, _, payload = post(gateway, "/v1/chat/completions", big, auth(gateway))
    assert code == 413
    assert "exceeds" in payload["error"]["message"]


def test_upstream_garbage_is_502_not_a_hang(gateway: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway).chat.completions.create(
            model="garbage", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert "invalid response" in caught.value.message
    assert time.monotonic() - started < 5


def test_upstream_rate_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway).chat.completions.create(
            model="limited", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.response.headers.get("retry-after")
    span = gateway.span(caught.value.response.headers["x-bastion-trace-id"])
    assert span["error_class"] == "upstream_rate_limited"


def test_upstream_500_and_unreachable_and_timeout(gateway: Gateway) -> None:
    sdk = client(gateway)
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="failing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(
            model="unreachable", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert "cannot reach provider 'nowhere'" in caught.value.message
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="hanging", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504
    assert time.monotonic() - started < 10  # read_timeout_s is 2 in this config


def test_stream_broken_upstream_ends_with_an_error_event(gateway: Gateway) -> None:
    sdk = client(gateway)
    stream = sdk.chat.completions.create(
        model="dropping", messages=[{"role": "user", "content": "tell me a story"}], stream=True
    )
    with pytest.raises(openai.APIError, match="broke off"):
        for _ in stream:
            pass
    import anthropic

    claude = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            model="dropping-claude", max_tokens=100, messages=[{"role": "user", "content": "story"}]
        ) as events,
    ):
        for _ in events:
            pass


def test_client_disconnect_mid_stream_is_recorded(gateway: Gateway) -> None:
    body = orjson.dumps(
        {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x " * 50}]}
    )
    with socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {gateway.key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        received = b""
        while b"data:" not in received:
            received += sock.recv(65536)
    trace_id = received.split(b"x-bastion-trace-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
    span = gateway.span(trace_id, timeout=20)
    assert span["error_class"] == "client_disconnected"
    assert span["output"] is not None  # what was streamed before the client left
