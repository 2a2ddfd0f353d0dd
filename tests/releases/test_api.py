"""The releases API on a live server, on SQLite and PostgreSQL: happy paths and bad input."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from bastion.auth import Role, create_key
from bastion.server.release_schemas import HistoryOut, ServingAtOut
from tests.conftest import LiveServer

RELEASE = {"name": "support", "prompts": {"answer": 1}, "model": "chat", "params": {"top_p": 1}}


def _call(
    server: LiveServer, method: str, path: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body)),
        method=method,
        headers={**server.headers(key), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


@pytest.fixture
def seeded(live_server: LiveServer) -> tuple[LiveServer, str, str]:
    prompt = {"name": "answer", "text": "Answer: {{ q }}", "variables": {"q": {}}}
    assert _call(live_server, "POST", "/api/v1/prompts", {"prompts": [prompt]})[0] == 201
    prompt["text"] = "Answer briefly: {{ q }}"
    assert _call(live_server, "POST", "/api/v1/prompts", {"prompts": [prompt]})[0] == 201
    status, first = _call(live_server, "POST", "/api/v1/releases", {"spec": RELEASE})
    assert status == 201
    assert first["created"]
    yaml_text = "name: support\nprompts: {answer: 2}\nmodel: chat\nparams: {top_p: 0.5}\n"
    status, second = _call(live_server, "POST", "/api/v1/releases", {"yaml": yaml_text})
    assert status == 201
    return live_server, first["release_id"], second["release_id"]


def test_release_api_round_trip(seeded: tuple[LiveServer, str, str]) -> None:
    server, a, b = seeded
    status, again = _call(server, "POST", "/api/v1/releases", {"spec": RELEASE})
    assert status == 200
    assert again["release_id"] == a
    assert not again["created"]
    status, listed = _call(server, "GET", "/api/v1/releases")
    assert {r["release_id"] for r in listed["items"]} == {a, b}
    status, shown = _call(server, "GET", f"/api/v1/releases/{a[:6]}")
    assert shown["spec"]["prompts"] == {"answer": 1}
    status, diff = _call(server, "GET", f"/api/v1/releases/{a}/diff?b={b}")
    assert status == 200
    assert [c["key"] for c in diff["config"]] == ["params.top_p"]
    assert diff["prompts"][0]["template_b"] == "Answer briefly: {{ q }}"

    assert _call(server, "POST", "/api/v1/routes/help/deploy", {"release": a})[0] == 200
    status, started = _call(
        server,
        "POST",
        "/api/v1/routes/help/rollout",
        {"candidate": b, "steps": [10, 100], "bake": "1s", "reason": "new wording"},
    )
    assert status == 201
    assert (started["weight"], started["state"]) == (10.0, "running")
    for action in ("pause", "resume"):
        status, doc = _call(server, "POST", f"/api/v1/routes/help/{action}", {"reason": action})
        assert status == 200
        assert doc["rollout"]["state"] == ("paused" if action == "pause" else "running")
    status, doc = _call(server, "POST", "/api/v1/routes/help/promote", {})
    assert status == 200
    assert doc["stable_release_id"] == b
    assert doc["rollout"] is None
    status, doc = _call(server, "POST", "/api/v1/routes/help/rollback", {"reason": "complaints"})
    assert doc["stable_release_id"] == a
    status, history = _call(server, "GET", "/api/v1/routes/help/history")
    actions = [e["action"] for e in history["items"]]
    assert actions == ["deploy", "start", "pause", "resume", "promote", "rollback"]
    assert history["items"][-1]["reason"] == "complaints"
    promoted_at = history["items"][4]["at"]
    status, at = _call(
        server, "GET", f"/api/v1/routes/help/history?at={promoted_at.replace('+', '%2B')}"
    )
    assert at["serving"]["stable_release_id"] == b
    # The answer is the shape the API document declares for it.
    assert isinstance(HistoryOut.model_validate(at).root, ServingAtOut)
    status, routes = _call(server, "GET", "/api/v1/routes")
    assert routes["items"] == [
        {"route": "help", "environment": "production", "stable_release_id": a, "rollout": None}
    ]
    status, openapi = _call(server, "GET", "/api/v1/openapi.json")
    assert "/api/v1/routes/{route}/rollout" in openapi["paths"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/v1/releases", {"spec": {"name": "x"}}, 400, "model must be"),
        ("POST", "/api/v1/releases", {}, 400, "either spec"),
        ("POST", "/api/v1/releases", b"{not json", 400, "invalid body"),
        (
            "POST",
            "/api/v1/releases",
            {"yaml": "name: x\nmodel: m\nprompts: {nope: 3}"},
            404,
            "no version 3 of prompt 'nope'",
        ),
        ("GET", "/api/v1/releases/doesnotexist", None, 404, "no release 'doesnotexist'"),
        ("POST", "/api/v1/routes/help/deploy", {"release": "zzz"}, 404, "no release 'zzz'"),
        (
            "POST",
            "/api/v1/routes/help/deploy",
            {"release": "support", "environment": "prod"},
            400,
            "environment",
        ),
        ("POST", "/api/v1/routes/help/rollout", {"candidate": "support"}, 409, "no stable release"),
        ("POST", "/api/v1/routes/help/promote", {}, 409, "no rollout in progress"),
        ("POST", "/api/v1/routes/help/rollback", {}, 404, "has no release"),
        ("GET", "/api/v1/routes/help", None, 404, "has no release"),
        ("GET", "/api/v1/routes/help/history?at=yesterday", None, 400, "at"),
        ("POST", "/api/v1/routes/..%2Fx/deploy", {"release": "support"}, 400, "route must be"),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(
    seeded: tuple[LiveServer, str, str],
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    server, _a, _b = seeded
    got, doc = _call(server, method, path, body)
    assert got == status, doc
    assert message in doc["error"]["message"]


def test_rollout_options_and_roles_are_checked(seeded: tuple[LiveServer, str, str]) -> None:
    server, a, b = seeded
    _call(server, "POST", "/api/v1/routes/help/deploy", {"release": a})
    for body, message in [
        ({"candidate": b, "steps": [50, 10]}, "steps must increase"),
        ({"candidate": b, "bake": "forever"}, "duration"),
        ({"candidate": b, "thresholds": {"vibes": 2}}, "unknown threshold"),
        ({"candidate": b, "strategy": "yolo"}, "strategy"),
        ({"candidate": a}, "already the stable release"),
        ({"candidate": b, "gate": {"baseline": "r1", "candidate": "r2"}}, "no eval run 'r1'"),
        (
            {
                "candidate": b,
                "gate": {"report": {"verdict": {"passed": False, "failures": ["f1 dropped 9%"]}}},
            },
            "gate failed: f1 dropped 9%",
        ),
    ]:
        status, doc = _call(server, "POST", "/api/v1/routes/help/rollout", body)
        assert 400 <= status < 500, (body, doc)
        assert message in doc["error"]["message"], (body, doc)
    with server.state.engine.begin() as conn:
        reader = create_key(conn, "default", name="reader", role=Role.READ).secret
    status, doc = _call(server, "POST", "/api/v1/routes/help/abort", {}, key=reader)
    assert status == 403
    # a passing gate report is recorded with the rollout and in its history
    report = {
        "verdict": {"passed": True},
        "baseline": {"run_id": "base1"},
        "candidate": {"run_id": "cand1"},
    }
    status, started = _call(
        server, "POST", "/api/v1/routes/help/rollout", {"candidate": b, "gate": {"report": report}}
    )
    assert status == 201
    assert started["gate"]["passed"] is True
    assert started["gate"]["candidate_run"] == "cand1"
    status, history = _call(server, "GET", "/api/v1/routes/help/history")
    assert "eval gate passed" in history["items"][-1]["reason"]
