"""A long URL reaches the API's handlers and gets a JSON answer, on SQLite and PostgreSQL."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from bastion.server.app import MAX_URL_BYTES
from tests.conftest import LiveServer


def _get(server: LiveServer, path: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(server.url + path, headers=server.headers())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.mark.parametrize("length", [9_000, 40_000])
def test_a_url_past_8_kib_is_answered_in_json(live_server: LiveServer, length: int) -> None:
    status, content_type, body = _get(live_server, "/api/v1/evals/runs?dataset=" + "a" * length)
    assert content_type.startswith("application/json")
    assert status in (200, 400)
    if status == 400:
        assert "dataset" in orjson.loads(body)["error"]["message"]


def test_a_url_past_the_limit_is_refused(live_server: LiveServer) -> None:
    status, _, _ = _get(live_server, "/api/v1/evals/runs?dataset=" + "a" * (MAX_URL_BYTES + 1))
    assert status == 400
