"""A gateway call found again by the x-request-id it was answered with: the trace and span APIs,
the OpenAPI document and ``bastion traces list --request-id`` (a real server on loopback)."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from bastion.auth import create_key
from bastion.cli.main import app
from bastion.settings import Settings
from bastion.store.engine import create_engine
from tests.conftest import LiveServer, start_live_server


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    settings = Settings(home=tmp_path / "home", database_url=db_url, gateway={"simulator": True})
    live, stop = start_live_server(settings)
    try:
        yield live
    finally:
        stop()


def _call(server: LiveServer, path: str, *, body: Any = None, **headers: str) -> Any:
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else orjson.dumps(body),
        headers={**server.headers(), "Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def _chat(server: LiveServer, request_id: str) -> None:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
    _call(server, "/v1/chat/completions", body=body, **{"x-request-id": request_id})


def _spans(server: LiveServer, request_id: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"request_id": request_id})
    items: list[dict[str, Any]] = _call(server, f"/api/v1/spans?{query}")["items"]
    return items


def test_a_request_id_finds_the_call_in_the_api_and_the_cli(
    server: LiveServer, db_url: str
) -> None:
    for request_id in ("req-one", "req-two"):
        _chat(server, request_id)
    deadline = time.monotonic() + 30
    while not (_spans(server, "req-one") and _spans(server, "req-two")):
        assert time.monotonic() < deadline, "the gateway spans were never stored"
        time.sleep(0.05)
    (span,) = _spans(server, "req-one")
    assert span["request_id"] == "req-one"
    assert span["service_name"] == "bastion-gateway"
    traces = _call(server, "/api/v1/traces?request_id=req-one")["items"]
    assert [t["trace_id"] for t in traces] == [span["trace_id"]]
    assert _call(server, "/api/v1/traces?request_id=req-none")["items"] == []

    # Another project's key does not see it.
    engine = create_engine(db_url)
    with engine.begin() as conn:
        other = create_key(conn, "elsewhere", name="other").secret
    engine.dispose()
    elsewhere = _call(server, "/api/v1/spans?request_id=req-one", Authorization=f"Bearer {other}")
    assert elsewhere["items"] == []

    result = CliRunner().invoke(
        app,
        ["traces", "list", "--request-id", "req-two", "--json", "--url", server.url,
         "--key", server.admin_key],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (listed,) = orjson.loads(result.stdout)["items"]
    assert listed["trace_id"] == _spans(server, "req-two")[0]["trace_id"]


def test_a_request_id_too_long_is_a_400_naming_it(server: LiveServer) -> None:
    for path in ("/api/v1/spans", "/api/v1/traces"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            _call(server, f"{path}?request_id={'x' * 129}")
        with caught.value as error:
            assert error.code == 400
            assert "request_id" in error.read().decode()


def test_the_openapi_document_declares_request_id(server: LiveServer) -> None:
    document = _call(server, "/api/v1/openapi.json")
    for path in ("/api/v1/spans", "/api/v1/traces"):
        names = {p["name"] for p in document["paths"][path]["get"]["parameters"]}
        assert "request_id" in names, (path, sorted(names))
