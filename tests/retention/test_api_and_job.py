"""``POST /api/v1/erasures`` over real HTTP (admin only, bad bodies refused, one project
only) and the retention job running inside a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.auth import Role, create_key
from bastion.retention import wants_job
from bastion.settings import Settings
from bastion.store.schema import spans
from tests.conftest import LiveServer, start_live_server
from tests.retention.support import find_text, project, trace, write
from tests.server.test_otlp_receiver import http


def key(server: LiveServer, slug: str, role: Role) -> str:
    with server.state.engine.begin() as conn:
        secret = create_key(conn, slug, name="test", role=role).secret
    server.state.keys.reload()
    return secret


def post(server: LiveServer, body: Any, secret: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    raw_body = body if isinstance(body, bytes) else orjson.dumps(body)
    status, _, raw = http("POST", server.url + "/api/v1/erasures", body=raw_body, headers=headers)
    return status, orjson.loads(raw)


def test_an_admin_erases_a_user_of_their_own_project_only(live_server: LiveServer) -> None:
    engine = live_server.state.engine
    mine = trace(days_ago=1, text="MINE-SECRET", user="carol", child_user="carol")
    theirs = trace(days_ago=1, text="THEIRS-SECRET", user="carol", child_user="carol")
    write(engine, live_server.state.default_project_id, mine)
    write(engine, project(engine, "other"), theirs)
    other_admin = key(live_server, "other", Role.ADMIN)

    status, body = post(live_server, {"user": "carol"}, live_server.admin_key)

    assert status == 200, body
    assert (body["subject"], body["traces"], body["spans"]) == ("user", 1, 3)
    assert body["actor"].startswith("key:")
    assert "carol" not in orjson.dumps(body).decode()
    assert find_text(engine, "MINE-SECRET") == []
    assert find_text(engine, "THEIRS-SECRET") != []
    status, body = post(live_server, {"user": "carol"}, other_admin)
    assert status == 200
    assert body["traces"] == 1
    assert find_text(engine, "THEIRS-SECRET") == []


def test_only_admin_keys_may_erase(live_server: LiveServer) -> None:
    write(live_server.state.engine, live_server.state.default_project_id,
          trace(days_ago=1, text="KEEP-ME", user="dave"))  # fmt: skip
    assert post(live_server, {"user": "dave"}, None)[0] == 401
    assert post(live_server, {"user": "dave"}, "bst_not-a-key")[0] == 401
    for role in (Role.WRITE, Role.READ, Role.INGEST):
        status, body = post(live_server, {"user": "dave"}, key(live_server, "default", role))
        assert status == 403, body
        assert body["error"]["type"] == "permission_error"
    assert find_text(live_server.state.engine, "KEEP-ME") != []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "exactly one of user, trace or session"),
        ({"user": "a", "trace": "b" * 32}, "exactly one of user, trace or session"),
        ({"trace": "not-a-trace-id"}, "32 hexadecimal characters"),
        ({"user": ""}, "user must not be empty"),
        ({"user": "u" * 201}, "user: String should have at most 200 characters"),
        ({"email": "a@b.c"}, "email: Extra inputs are not permitted"),
        ({"user": 5}, "user: Input should be a valid string"),
        (b"[1, 2", "invalid body"),
        ({"user": "a\u0000b"}, "NUL character"),
    ],
)
def test_bad_bodies_get_a_400_naming_the_problem(
    live_server: LiveServer, body: Any, message: str
) -> None:
    status, answer = post(live_server, body, live_server.admin_key)
    assert status == 400, answer
    assert message in answer["error"]["message"]


def test_the_route_is_declared_in_the_openapi_document(live_server: LiveServer) -> None:
    status, _, raw = http("GET", live_server.url + "/api/v1/openapi.json")
    assert status == 200
    operation = orjson.loads(raw)["paths"]["/api/v1/erasures"]["post"]
    assert set(operation["responses"]) >= {"200", "400", "401", "403", "503"}
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErasureBody"
    )


@pytest.fixture
def retaining_server(settings: Settings) -> Iterator[LiveServer]:
    """A server whose job keeps spans 30 days and passes every second."""
    settings.retention.spans_days = 30
    settings.retention.interval_s = 1
    server, stop = start_live_server(settings)
    try:
        yield server
    finally:
        stop()


def test_the_job_deletes_expired_spans_while_the_server_runs(retaining_server: LiveServer) -> None:
    engine = retaining_server.state.engine
    pid = retaining_server.state.default_project_id
    write(engine, pid, trace(days_ago=45, text="EXPIRED"))
    write(engine, pid, trace(days_ago=2, text="FRESH"))
    deadline = time.monotonic() + 30
    while find_text(engine, "EXPIRED") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert find_text(engine, "EXPIRED") == []
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(spans)).scalar()
    assert left == 3
    removed = 'bastion_retention_rows_total{kind="traces_removed"} 1.0'
    while removed not in metrics(retaining_server) and time.monotonic() < deadline:
        time.sleep(0.2)  # counted when the pass ends
    assert removed in metrics(retaining_server)
    assert 'bastion_retention_rows_total{kind="spans"} 3.0' in metrics(retaining_server)


def metrics(server: LiveServer) -> str:
    status, _, raw = http("GET", server.url + "/metrics")
    assert status == 200
    return raw.decode()


def test_the_job_runs_in_one_worker_and_only_when_a_period_is_set() -> None:
    assert not wants_job(Settings())
    assert wants_job(Settings(retention={"payload_days": 7}))
    assert wants_job(Settings(projects={"p": {"retention": {"scores_days": 3}}}))
    assert not wants_job(
        Settings(
            retention={"spans_days": 7}, projects={"p": {"retention": {"spans_days": "forever"}}}
        ).model_copy(update={"worker_index": 1})
    )
    assert wants_job(Settings(retention={"spans_days": 7}).model_copy(update={"worker_index": 0}))
    assert not wants_job(Settings(retention={"spans_days": 7, "job": False}))
