"""The prompt registry over real HTTP: roles, projects, errors, labels and rollback."""

from __future__ import annotations

from typing import Any

import orjson

from bastion.auth import Role
from bastion.prompts import PromptSpec, render
from tests.conftest import LiveServer
from tests.server.test_api_auth import make_key
from tests.server.test_otlp_receiver import http


def call(
    server: LiveServer, method: str, path: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    status, _, raw = http(
        method,
        server.url + path,
        body=None if body is None else orjson.dumps(body),
        headers={**server.headers(key), "Content-Type": "application/json"},
    )
    return status, orjson.loads(raw)


GREETING = {
    "name": "greeting",
    "text": "Hello {{ who }}.",
    "variables": {"who": {"type": "string"}},
}
SUPPORT = {
    "name": "support",
    "model": "gpt-4o-mini",
    "variables": {"q": {"type": "string"}},
    "messages": [{"role": "user", "content": '{% include "greeting" %} {{ q }}'}],
}


def test_push_get_label_and_render_over_http(live_server: LiveServer) -> None:
    writer = make_key(live_server, "default", Role.WRITE)
    status, out = call(
        live_server,
        "POST",
        "/api/v1/prompts",
        {"prompts": [SUPPORT, GREETING], "message": "first", "git_sha": "deadbeef"},
        writer,
    )
    assert status == 201, out
    assert [(r["name"], r["version"], r["status"]) for r in out["results"]] == [
        ("support", 1, "created"),
        ("greeting", 1, "created"),
    ]
    status, out = call(live_server, "POST", "/api/v1/prompts", {"prompts": [GREETING]}, writer)
    assert (status, out["results"][0]["status"]) == (200, "unchanged")

    # No label yet: the default (production) is missing, and the error says which labels exist.
    status, out = call(live_server, "GET", "/api/v1/prompts/support", key=writer)
    assert status == 404
    assert out["error"]["message"] == "prompt 'support' has no label 'production' (labels: none)"

    status, change = call(
        live_server, "PUT", "/api/v1/prompts/support/labels/production", {"version": 1}, writer
    )
    assert status == 200, change
    assert (change["from_version"], change["to_version"], change["changed"]) == (None, 1, True)

    status, got = call(live_server, "GET", "/api/v1/prompts/support", key=writer)
    assert status == 200, got
    assert (got["version"], got["labels"], got["partial_versions"]) == (
        1,
        ["production"],
        {"greeting": 1},
    )
    partials = {n: PromptSpec.from_dict(s) for n, s in got["partials"].items()}
    rendered = render(PromptSpec.from_dict(got["spec"]), {"who": "Ada", "q": "Why?"}, partials)
    assert rendered == [{"role": "user", "content": "Hello Ada. Why?"}]

    status, listing = call(live_server, "GET", "/api/v1/prompts", key=writer)
    assert [(p["name"], p["latest_version"], p["labels"]) for p in listing["items"]] == [
        ("greeting", 1, {}),
        ("support", 1, {"production": 1}),
    ]
    status, log = call(live_server, "GET", "/api/v1/prompts/support/log", key=writer)
    assert status == 200
    version = log["versions"][0]
    assert (version["message"], version["git_sha"]) == ("first", "deadbeef")
    assert version["author"].startswith("default-write (key ")
    assert log["events"][0]["actor"] == version["author"]


def test_rollback_diff_and_protection(live_server: LiveServer) -> None:
    writer = make_key(live_server, "default", Role.WRITE)
    admin = live_server.admin_key
    for text in ("Hi {{ who }}.", "Hello {{ who }}!"):
        body = {"prompts": [{**GREETING, "text": text}], "message": text}
        assert call(live_server, "POST", "/api/v1/prompts", body, writer)[0] == 201
    for version in (1, 2):
        status, _ = call(
            live_server,
            "PUT",
            "/api/v1/prompts/greeting/labels/production",
            {"version": version},
            writer,
        )
        assert status == 200

    status, out = call(
        live_server, "GET", "/api/v1/prompts/greeting/diff?a=production&b=1", key=writer
    )
    assert status == 200, out
    assert "-Hello {{ who }}!" in out["diff"]
    assert "+Hi {{ who }}." in out["diff"]

    path = "/api/v1/prompts/greeting/labels/production"
    status, out = call(live_server, "POST", path + "/protect", {}, writer)
    assert status == 403  # only admins protect
    status, out = call(live_server, "POST", path + "/protect", None, admin)
    assert (status, out["protected"]) == (200, True)
    status, out = call(live_server, "POST", path + "/rollback", {"reason": "bad"}, writer)
    assert status == 403
    assert "protected" in out["error"]["message"]
    status, out = call(live_server, "POST", path + "/rollback", {"reason": "bad"}, admin)
    assert (status, out["from_version"], out["to_version"]) == (200, 2, 1)
    status, got = call(live_server, "GET", "/api/v1/prompts/greeting?label=production", key=writer)
    assert got["spec"]["text"] == "Hi {{ who }}."

    status, out = call(
        live_server, "PUT", "/api/v1/prompts/greeting/labels/staging", {"version": 1}, writer
    )
    assert status == 200
    status, out = call(
        live_server, "POST", "/api/v1/prompts/greeting/labels/staging/rollback", None, writer
    )
    assert status == 409
    assert "no previous version" in out["error"]["message"]


def test_roles_errors_and_projects(live_server: LiveServer) -> None:
    reader = make_key(live_server, "default", Role.READ)
    writer = make_key(live_server, "default", Role.WRITE)
    other = make_key(live_server, "other", Role.WRITE)
    assert call(live_server, "POST", "/api/v1/prompts", {"prompts": [GREETING]}, reader)[0] == 403
    assert call(live_server, "POST", "/api/v1/prompts", {"prompts": [GREETING]}, writer)[0] == 201
    assert call(live_server, "GET", "/api/v1/prompts/greeting?version=1", key=reader)[0] == 200
    status, _ = call(
        live_server, "PUT", "/api/v1/prompts/greeting/labels/production", {"version": 1}, reader
    )
    assert status == 403

    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/api/v1/prompts", {"prompts": [{"name": "x"}]}, 400, "invalid prompt 'x'"),
        ("POST", "/api/v1/prompts", {"prompts": []}, 400, "invalid body: prompts"),
        (
            "POST",
            "/api/v1/prompts",
            {"prompts": [{"name": "x", "text": "{{ y }}"}]},
            400,
            "undeclared variable 'y'",
        ),
        ("GET", "/api/v1/prompts/nope", None, 404, "no prompt 'nope'"),
        ("GET", "/api/v1/prompts/greeting?version=7", None, 404, "no version 7"),
        ("GET", "/api/v1/prompts/greeting?version=zero", None, 400, "'version'"),
        ("GET", "/api/v1/prompts/greeting/diff?a=1", None, 400, "'b'"),
        ("PUT", "/api/v1/prompts/greeting/labels/latest", {"version": 1}, 400, "reserved"),
        ("PUT", "/api/v1/prompts/greeting/labels/prod", {"version": 0}, 400, "version"),
    ]
    for method, path, body, expected, message in cases:
        status, out = call(live_server, method, path, body, writer)
        assert status == expected, (path, out)
        assert message in out["error"]["message"], (path, out)

    # Another project sees nothing and can reuse the name independently.
    assert call(live_server, "GET", "/api/v1/prompts", key=other)[1] == {"items": []}
    assert call(live_server, "GET", "/api/v1/prompts/greeting?version=1", key=other)[0] == 404
    status, out = call(live_server, "POST", "/api/v1/prompts", {"prompts": [GREETING]}, other)
    assert (status, out["results"][0]["status"]) == (201, "created")


def test_openapi_documents_the_prompt_routes(live_server: LiveServer) -> None:
    status, doc = call(live_server, "GET", "/api/v1/openapi.json")
    assert status == 200
    paths = doc["paths"]
    assert set(paths["/api/v1/prompts"]) == {"get", "post"}
    assert "404" in paths["/api/v1/prompts/{name}"]["get"]["responses"]
    assert "409" in paths["/api/v1/prompts/{name}/labels/{label}/rollback"]["post"]["responses"]
    assert "PushBody" in doc["components"]["schemas"]
