"""Crafted input to the API answers a 400 naming the problem, never a 500, on both databases:
times the store cannot hold, numbers that overflow its columns, NUL characters PostgreSQL
cannot hold; and stored times read back with their UTC offset on SQLite as on PostgreSQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from tests.conftest import LiveServer
from tests.server.test_otlp_receiver import http

RANGE = "1678-01-01T00:00:00Z up to (not including) 2262-01-01T00:00:00Z"


def call(server: LiveServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    status, _, out = http(
        method,
        server.url + path,
        body=raw,
        headers={**server.headers(), "Content-Type": "application/json"},
    )
    return status, orjson.loads(out) if out else None


def message(body: Any) -> str:
    return str(body["error"]["message"])


OUT_OF_RANGE = [
    ("/api/v1/spans?start=1600-01-01T00:00:00Z", "start"),
    ("/api/v1/traces?start=1677-12-31T23:59:59Z", "start"),
    ("/api/v1/traces?end=2262-01-01T00:00:00Z", "end"),
    ("/api/v1/spans?end=9999-12-31T23:59:59-23:59", "end"),
    ("/api/v1/metrics/summary?end=0001-01-01T00:00:00", "end"),
    ("/api/v1/metrics/summary?start=2500-06-01T00:00:00Z", "start"),
    ("/api/v1/routes/checkout/history?at=1139-12-07T10:30:31%2B06:02", "at"),
]
OVERFLOWING = [
    ("GET", "/api/v1/spans?min_latency_ms=1e300", "'min_latency_ms'"),
    ("GET", "/api/v1/traces?min_latency_ms=inf", "'min_latency_ms'"),
    ("GET", "/api/v1/traces?min_cost_usd=inf", "'min_cost_usd'"),
    ("DELETE", "/api/v1/keys/99999999999999999999999", "key id"),
    ("DELETE", "/api/v1/keys/%C2%B3", "key id"),
    ("GET", "/api/v1/evals/datasets/qa/versions/%C2%B3", "dataset version"),
    ("GET", "/api/v1/evals/datasets/qa/versions/99999999999", "dataset version"),
    ("GET", "/api/v1/evals/datasets/qa?version=99999999999", "'version'"),
    ("GET", "/api/v1/prompts/greet?version=99999999999", "'version'"),
]
WITH_NUL: list[tuple[str, str, bytes | None, str]] = [
    ("GET", "/api/v1/spans?user=a%00b", None, "query parameter 'user'"),
    ("GET", "/api/v1/prompts/a%00b/versions", None, "invalid path"),
    ("GET", "/api/v1/evals/datasets/a%00/versions/1", None, "invalid path"),
    ("POST", "/api/v1/evals/datasets/qa/from-traces", b'{"model": "m\\u0000"}', "invalid body"),
    ("POST", "/api/v1/keys", b'{"name": "\\\\\\u0000"}', "invalid body"),
]


def test_times_out_of_the_stores_range_are_a_400_naming_them(live_server: LiveServer) -> None:
    for path, name in OUT_OF_RANGE:
        status, body = call(live_server, "GET", path)
        assert status == 400, (path, body)
        assert f"invalid query parameter {name!r}" in message(body)
        assert RANGE in message(body)


def test_times_at_the_edges_of_the_range_are_served(live_server: LiveServer) -> None:
    for path in (
        "/api/v1/spans?start=1678-01-01T00:00:00Z&end=2261-12-31T23:59:59Z",
        "/api/v1/traces?start=1678-01-01T00:00:00Z",
        "/api/v1/metrics/summary?end=1678-01-01T00:00:00Z",
    ):
        status, body = call(live_server, "GET", path)
        assert status == 200, (path, body)


def test_prompt_usage_since_and_dataset_times_are_checked(live_server: LiveServer) -> None:
    for since in ("1500-01-01T00:00:00Z", "999999999999d", "²d"):
        status, body = call(live_server, "GET", f"/api/v1/prompts/greet/usage?since={quote(since)}")
        assert status == 400, body
        assert message(body).startswith(f"since {since!r}"), body
    path = "/api/v1/evals/datasets/qa/from-traces"
    status, body = call(live_server, "POST", path, {"since": "0999-01-01T00:00:00"})
    assert status == 400, body
    assert "since '0999-01-01T00:00:00' is out of range" in message(body)
    status, body = call(live_server, "POST", path, {"until": "3000-01-01T00:00:00Z"})
    assert status == 400, body
    assert "until '3000-01-01T00:00:00Z' is out of range" in message(body)


def test_numbers_the_columns_cannot_hold_are_a_400(live_server: LiveServer) -> None:
    for method, path, needle in OVERFLOWING:
        status, body = call(live_server, method, path)
        assert status == 400, (path, body)
        assert needle in message(body), (path, body)


def test_nul_characters_are_a_400_on_both_databases(live_server: LiveServer) -> None:
    for method, path, body, needle in WITH_NUL:
        status, out = call(live_server, method, path, body)
        assert status == 400, (path, out)
        assert needle in message(out), (path, out)
        assert "NUL" in message(out)


def test_an_escaped_backslash_before_u0000_is_text_not_nul(live_server: LiveServer) -> None:
    status, out = call(live_server, "POST", "/api/v1/keys", b'{"name": "C:\\\\u0000"}')
    assert status == 201, out
    assert out["name"] == "C:\\u0000"


def test_stored_times_carry_their_utc_offset(live_server: LiveServer) -> None:
    rows = [{"id": "q1", "vars": {"q": "?"}, "expected": "!"}]
    status, out = call(live_server, "POST", "/api/v1/evals/datasets", {"name": "qa", "items": rows})
    assert status == 201, out
    status, out = call(live_server, "GET", "/api/v1/evals/datasets")
    assert status == 200, out
    created = out["items"][0]["created_at"]
    assert created.endswith(("Z", "+00:00")), created
