"""Helpers of the ingest tests: OTLP/JSON bodies, a second project's key, polling the API."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import orjson

from bastion.auth import create_key
from bastion.providers.simulator import SimulatorConfig, SimulatorServer
from bastion.settings import Settings, load_settings
from tests.conftest import LiveServer, start_live_server
from tests.server.test_otlp_receiver import http

GATEWAY_CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
models:
  chat: {{deployments: [{{provider: sim, model: sim-small}}]}}
"""


def attribute(key: str, value: Any) -> dict[str, Any]:
    """An OTLP/JSON key-value."""
    if isinstance(value, bool):
        wrapped: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        wrapped = {"intValue": str(value)}
    elif isinstance(value, float):
        wrapped = {"doubleValue": value}
    else:
        wrapped = {"stringValue": value}
    return {"key": key, "value": wrapped}


def otlp_body(spans: list[dict[str, Any]], service: str = "svc") -> bytes:
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [attribute("service.name", service)]},
                    "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
                }
            ]
        }
    )


def plain_span(trace_id: str, span_id: str, name: str = "ok") -> dict[str, Any]:
    now = time.time_ns()
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "startTimeUnixNano": str(now),
        "endTimeUnixNano": str(now + 1_000_000),
    }


def post_otlp(server: LiveServer, body: bytes, key: str | None = None) -> tuple[int, Any]:
    headers = {**server.headers(key), "Content-Type": "application/json"}
    status, _, raw = http("POST", server.url + "/v1/traces", body=body, headers=headers)
    return status, orjson.loads(raw) if raw else {}


def project_key(server: LiveServer, project: str) -> str:
    """A new write key of ``project`` (created if missing), known to the server at once."""
    with server.state.engine.begin() as conn:
        secret = create_key(conn, project, name="test").secret
    server.state.keys.reload()
    return secret


def get(server: LiveServer, path: str, key: str | None = None, **params: Any) -> tuple[int, Any]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    status, _, raw = http("GET", f"{server.url}{path}?{query}", headers=server.headers(key))
    return status, orjson.loads(raw) if raw else None


def stored_spans(
    server: LiveServer, trace_id: str, key: str | None = None, timeout: float = 0.0
) -> list[dict[str, Any]]:
    """The stored spans of ``trace_id`` (whatever their times), polled up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        status, tree = get(server, f"/api/v1/traces/{trace_id}", key)
        assert status in (200, 404), tree
        if status == 200 or time.monotonic() >= deadline:
            return _flatten(tree["roots"]) if status == 200 else []
        time.sleep(0.05)


def _flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in nodes:
        out.append(node)
        out.extend(_flatten(node.get("children") or []))
    return out


def rejected(server: LiveServer, key: str | None = None) -> list[dict[str, Any]]:
    status, page = get(server, "/api/v1/ingest/rejects", key, limit=1000)
    assert status == 200, page
    return list(page["items"])


def chat(client: openai.OpenAI, **request: Any) -> str | None:
    """Make a chat call; the id of the trace the gateway recorded it under (None: none was)."""
    try:
        response = client.chat.completions.with_raw_response.create(**request)
    except openai.APIStatusError as exc:
        return exc.response.headers.get("x-bastion-trace-id")
    return response.headers.get("x-bastion-trace-id")


@contextmanager
def gateway_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """A server with its gateway on loopback, the provider simulator behind it."""
    with SimulatorServer(SimulatorConfig(seed=5)) as sim:
        config = tmp_path / "bastion.yaml"
        config.write_text(GATEWAY_CONFIG.format(sim=sim.url))
        loaded = load_settings(config, home=settings.home, database_url=settings.database_url)
        server, stop = start_live_server(loaded)
        try:
            yield server
        finally:
            stop()
