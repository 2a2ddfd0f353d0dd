"""API keys, roles and project isolation over real HTTP: project A never sees project B."""

from __future__ import annotations

import time

import orjson
import pytest
import sqlalchemy as sa

from bastion.auth import Role, create_key, hash_key
from bastion.store.engine import create_engine
from bastion.store.schema import api_keys
from tests.conftest import LiveServer
from tests.server.test_otlp_receiver import http


def make_key(server: LiveServer, project: str, role: Role = Role.WRITE) -> str:
    engine = create_engine(server.settings.resolved_database_url)
    with engine.begin() as conn:
        secret = create_key(conn, project, name=f"{project}-{role.value}", role=role).secret
    engine.dispose()
    return secret


def send_span(server: LiveServer, key: str, trace_id: str, name: str) -> int:
    now = time.time_ns()
    span = {
        "traceId": trace_id,
        "spanId": "cd" * 8,
        "name": name,
        "startTimeUnixNano": now,
        "endTimeUnixNano": now + 1,
    }
    status, _, _ = http(
        "POST",
        server.url + "/v1/traces",
        body=orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    return status


def test_keys_are_stored_hashed_and_work_at_once(live_server: LiveServer) -> None:
    secret = make_key(live_server, "alpha")
    engine = create_engine(live_server.settings.resolved_database_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(api_keys.c.key_hash, api_keys.c.prefix)).all()
    engine.dispose()
    assert all(secret not in (h, p) for h, p in stored)
    assert (hash_key(secret), secret[:12]) in [(h, p) for h, p in stored]
    assert send_span(live_server, secret, "11" * 16, "alpha-span") == 200  # no restart needed


def test_project_isolation_on_every_read_route(live_server: LiveServer) -> None:
    key_a, key_b = make_key(live_server, "alpha"), make_key(live_server, "beta")
    assert send_span(live_server, key_a, "aa" * 16, "secret-of-alpha") == 200
    assert send_span(live_server, key_b, "bb" * 16, "beta-span") == 200
    auth_b = {"Authorization": f"Bearer {key_b}"}

    status, _, body = http("GET", live_server.url + "/api/v1/traces", headers=auth_b)
    assert status == 200
    assert b"secret-of-alpha" not in body
    assert b"beta-span" in body
    status, _, _ = http("GET", live_server.url + f"/api/v1/traces/{'aa' * 16}", headers=auth_b)
    assert status == 404
    status, _, body = http("GET", live_server.url + "/api/v1/spans?q=alpha", headers=auth_b)
    assert status == 200
    assert orjson.loads(body)["items"] == []
    # The same trace id written by B lands in B's project and does not touch A's trace.
    assert send_span(live_server, key_b, "aa" * 16, "beta-collision") == 200
    status, _, body = http(
        "GET",
        live_server.url + f"/api/v1/traces/{'aa' * 16}",
        headers={"Authorization": f"Bearer {key_a}"},
    )
    assert status == 200
    assert b"beta-collision" not in body


@pytest.mark.parametrize(
    ("role", "route", "method", "expected"),
    [
        (Role.INGEST, "/api/v1/traces", "GET", 403),
        (Role.READ, "/api/v1/keys", "GET", 403),
        (Role.WRITE, "/api/v1/keys", "POST", 403),
        (Role.READ, "/api/v1/traces", "GET", 200),
    ],
)
def test_roles_limit_what_a_key_can_do(
    live_server: LiveServer, role: Role, route: str, method: str, expected: int
) -> None:
    key = make_key(live_server, "gamma", role)
    status, _, body = http(
        method,
        live_server.url + route,
        body=b"{}" if method == "POST" else None,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert status == expected, body


def test_read_only_key_cannot_ingest(live_server: LiveServer) -> None:
    assert send_span(live_server, make_key(live_server, "delta", Role.READ), "dd" * 16, "x") == 403


def test_key_api_create_list_revoke(live_server: LiveServer) -> None:
    admin = live_server.headers()
    status, _, body = http(
        "POST",
        live_server.url + "/api/v1/keys",
        body=b'{"name": "ci", "role": "ingest"}',
        headers=admin,
    )
    assert status == 201, body
    created = orjson.loads(body)
    assert created["secret"].startswith("bst_")
    assert created["role"] == "ingest"
    status, _, body = http("GET", live_server.url + "/api/v1/keys", headers=admin)
    listed = orjson.loads(body)["items"]
    assert created["id"] in [k["id"] for k in listed]
    assert all("secret" not in k or k["secret"] is None for k in listed)
    assert send_span(live_server, created["secret"], "ee" * 16, "x") == 200

    status, _, _ = http("DELETE", live_server.url + f"/api/v1/keys/{created['id']}", headers=admin)
    assert status == 200
    assert send_span(live_server, created["secret"], "ef" * 16, "x") == 401


def test_admin_of_one_project_cannot_revoke_another_projects_key(live_server: LiveServer) -> None:
    other_admin = make_key(live_server, "omega", Role.ADMIN)
    engine = create_engine(live_server.settings.resolved_database_url)
    with engine.connect() as conn:
        default_key_id = conn.execute(sa.select(sa.func.min(api_keys.c.id))).scalar_one()
    engine.dispose()
    status, _, _ = http(
        "DELETE",
        live_server.url + f"/api/v1/keys/{default_key_id}",
        headers={"Authorization": f"Bearer {other_admin}"},
    )
    assert status == 404
    status, _, _ = http("GET", live_server.url + "/api/v1/traces", headers=live_server.headers())
    assert status == 200


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/api/v1/traces?limit=0", "limit"),
        ("/api/v1/traces?status=broken", "status"),
        ("/api/v1/traces?start=yesterday", "start"),
        ("/api/v1/traces?cursor=%%%", "cursor"),
        ("/api/v1/traces?colour=red", "colour"),
        ("/api/v1/traces/not-a-trace-id", "trace id"),
        ("/api/v1/metrics/summary?group_by=weather", "weather"),
    ],
)
def test_bad_queries_get_400_naming_the_problem(
    live_server: LiveServer, path: str, fragment: str
) -> None:
    status, _, body = http("GET", live_server.url + path, headers=live_server.headers())
    assert status == 400, body
    assert fragment in orjson.loads(body)["error"]["message"]


def test_health_ready_metrics_and_openapi(live_server: LiveServer) -> None:
    assert http("GET", live_server.url + "/healthz")[0] == 200
    status, _, body = http("GET", live_server.url + "/readyz")
    assert status == 200
    assert orjson.loads(body)["database"] == "ok"
    status, _headers, body = http("GET", live_server.url + "/metrics")
    assert status == 200
    assert b"bastion_spans_received_total" in body
    status, _, body = http("GET", live_server.url + "/api/v1/openapi.json")
    doc = orjson.loads(body)
    assert status == 200
    assert "/api/v1/traces" in doc["paths"]
    assert "TracePage" in doc["components"]["schemas"]


def test_a_new_key_works_for_every_concurrent_request_after_one_reload(
    engine: sa.Engine,
) -> None:
    import asyncio

    from bastion.auth import KeyCache

    keys = KeyCache(engine, miss_reload_s=60.0)
    keys.reload()
    with engine.begin() as conn:
        secret = create_key(conn, "fresh").secret  # created after the cache was loaded
    reloads = 0
    original = keys.reload

    def counted() -> None:
        nonlocal reloads
        reloads += 1
        original()

    keys.reload = counted  # type: ignore[method-assign]

    async def burst() -> list[object]:
        return await asyncio.gather(*(keys.lookup_or_reload(secret) for _ in range(50)))

    found = asyncio.run(burst())
    assert all(p is not None for p in found)  # none refused while the one reload ran
    assert reloads == 1
    assert asyncio.run(keys.lookup_or_reload("bst_unknown")) is None  # throttled: no reload
    assert reloads == 1
