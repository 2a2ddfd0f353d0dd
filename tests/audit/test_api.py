"""``GET /api/v1/audit``: admin only, one project's records, filters and cursor pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from bastion.audit import AuditTrail
from bastion.auth import Role, create_key, ensure_project
from tests.audit.support import call
from tests.conftest import LiveServer

PROMPT = {"name": "answer", "text": "Answer: {{ q }}", "variables": {"q": {}}}


def _changes(server: LiveServer, key: str | None = None, count: int = 3) -> None:
    for i in range(count):
        prompt = {**PROMPT, "text": f"Answer {i}: {{{{ q }}}}"}
        assert call(server, "POST", "/api/v1/prompts", {"prompts": [prompt]}, key=key)[0] == 201
    label = "/api/v1/prompts/answer/labels/production"
    assert call(server, "PUT", label, {"version": 1}, key=key)[0] == 200


@pytest.fixture
def two_projects(live_server: LiveServer) -> tuple[LiveServer, str, str]:
    """The default project (the server's admin key) and ``other`` with its own admin key;
    changes in both, and an operator-wide record no project sees."""
    with live_server.state.engine.begin() as conn:
        other = create_key(conn, "other", name="other-admin", role=Role.ADMIN).secret
        writer = create_key(conn, "default", name="writer", role=Role.WRITE).secret
        AuditTrail(live_server.state.audit, "system:breaker").record(
            conn, "breaker.open", "deployment", "sim/sim-small", project_id=None
        )
    live_server.state.keys.reload()  # keys made a moment ago, not through the API
    _changes(live_server)
    _changes(live_server, key=other, count=1)
    return live_server, other, writer


def _get(server: LiveServer, query: str = "", key: str | None = None) -> tuple[int, Any]:
    return call(server, "GET", "/api/v1/audit" + query, key=key)


def test_each_admin_reads_only_its_own_project(two_projects: tuple[LiveServer, str, str]) -> None:
    server, other, _ = two_projects
    with server.state.engine.connect() as conn:
        default_id, other_id = ensure_project(conn), ensure_project(conn, "other")
    status, mine = _get(server)
    assert status == 200
    assert [r["action"] for r in mine["items"]] == ["label.move"] + ["prompt.push"] * 3
    assert {r["project_id"] for r in mine["items"]} == {default_id}
    assert [r["seq"] for r in mine["items"]] == sorted(
        (r["seq"] for r in mine["items"]), reverse=True
    )
    status, theirs = _get(server, key=other)
    assert status == 200
    assert [(r["action"], r["project_id"]) for r in theirs["items"]] == [
        ("label.move", other_id), ("prompt.push", other_id)
    ]  # fmt: skip
    assert mine["next_cursor"] is None
    record = mine["items"][0]
    assert record["details"] == {
        "prompt": "answer", "label": "production", "from_version": None, "to_version": 1,
        "protected": False,
    }  # fmt: skip
    assert len(record["hash"]) == 64
    assert record["after_digest"].startswith("sha256:")


def test_only_admins_read_the_audit_log(two_projects: tuple[LiveServer, str, str]) -> None:
    server, _, writer = two_projects
    with server.state.engine.begin() as conn:
        reader = create_key(conn, "default", name="reader", role=Role.READ).secret
    server.state.keys.reload()
    for key in (writer, reader):
        status, body = _get(server, key=key)
        assert status == 403
        assert body["error"]["type"] == "permission_error"
    status, _ = _get(server, key="bst_not-a-key")
    assert status == 401


def test_filters_and_pages(two_projects: tuple[LiveServer, str, str]) -> None:
    server, _, _ = two_projects
    assert [r["action"] for r in _get(server, "?action=label.*")[1]["items"]] == ["label.move"]
    assert len(_get(server, "?action=prompt.push")[1]["items"]) == 3
    assert len(_get(server, "?object=label:answer:production")[1]["items"]) == 1
    assert len(_get(server, "?object=prompt")[1]["items"]) == 3
    assert _get(server, "?object=prompt:nothing")[1]["items"] == []
    actor = _get(server)[1]["items"][0]["actor"]
    assert len(_get(server, f"?actor={quote(actor)}")[1]["items"]) == 4
    assert len(_get(server, "?actor=key:*")[1]["items"]) == 4
    assert _get(server, "?actor=system:*")[1]["items"] == []  # the breaker's is nobody's project
    hour = timedelta(hours=1)
    since = quote((datetime.now(UTC) - hour).isoformat())
    until = quote((datetime.now(UTC) - hour).isoformat())
    assert len(_get(server, f"?since={since}")[1]["items"]) == 4
    assert _get(server, f"?until={until}")[1]["items"] == []
    seen: list[int] = []
    cursor = ""
    while True:
        status, page = _get(server, f"?limit=1{cursor}")
        assert status == 200
        seen += [r["seq"] for r in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [r["seq"] for r in _get(server)[1]["items"]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?cursor=abc", "'cursor'"),
        ("?cursor=0", "'cursor'"),
        ("?cursor=99999999999999999999", "'cursor'"),
        ("?limit=0", "'limit'"),
        ("?limit=5000", "'limit'"),
        ("?since=yesterday", "'since'"),
        ("?verbose=1", "unknown query parameter 'verbose'"),
        ("?actor=" + "x" * 301, "'actor'"),
    ],
)
def test_bad_queries_are_refused_by_name(live_server: LiveServer, query: str, message: str) -> None:
    status, body = _get(live_server, query)
    assert status == 400
    assert message in body["error"]["message"]


def test_the_route_is_in_the_api_document(live_server: LiveServer) -> None:
    status, document = call(live_server, "GET", "/api/v1/openapi.json")
    assert status == 200
    operation = document["paths"]["/api/v1/audit"]["get"]
    assert operation["security"] == [{"bearer": []}]
    assert {p["name"] for p in operation["parameters"]} == {
        "since", "until", "actor", "action", "object", "limit", "cursor"
    }  # fmt: skip
    assert "AuditPageOut" in document["components"]["schemas"]
