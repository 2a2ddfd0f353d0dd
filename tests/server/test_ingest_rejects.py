"""The dead-letter store, read through ``GET /api/v1/ingest/rejects`` and ``bastion ingest
rejects``: each project sees its own refused spans only."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import orjson
import sqlalchemy as sa

from bastion.store.dead_letters import Rejected, store_rejects
from bastion.store.schema import projects
from bastion.tracing.model import Span
from tests.conftest import LiveServer
from tests.server.ingest_support import get, project_key, rejected
from tests.server.test_otlp_receiver import http


def _span(name: str) -> Span:
    now = time.time_ns()
    return Span(os.urandom(16).hex(), os.urandom(8).hex(), name, now, now + 1, input_tokens=2**63)


def _seed(server: LiveServer) -> tuple[str, list[Span], list[Span]]:
    """Refused spans of the default project and of another; the other project's key."""
    other_key = project_key(server, "other")
    engine = server.state.engine
    with engine.connect() as conn:
        other_id = conn.execute(sa.select(projects.c.id).where(projects.c.slug == "other")).scalar()
    mine = [_span(f"mine-{i}") for i in range(3)]
    theirs = [_span("theirs\x00")]
    with engine.begin() as conn:
        store_rejects(
            conn,
            [Rejected(server.state.default_project_id, s, OverflowError("too big")) for s in mine]
            + [Rejected(int(other_id), s, sqlite3.IntegrityError("NOT NULL")) for s in theirs],
        )
        # A span refused again (an exporter retrying) is kept once.
        store_rejects(conn, [Rejected(server.state.default_project_id, mine[0], OverflowError())])
    return other_key, mine, theirs


def test_each_project_reads_its_own_rejects_page_by_page(live_server: LiveServer) -> None:
    other_key, mine, _ = _seed(live_server)

    status, first = get(live_server, "/api/v1/ingest/rejects", limit=2)
    assert status == 200, first
    assert [r["record"]["name"] for r in first["items"]] == ["mine-2", "mine-1"]
    status, second = get(
        live_server, "/api/v1/ingest/rejects", limit=2, cursor=first["next_cursor"]
    )
    assert [r["record"]["name"] for r in second["items"]] == ["mine-0"]
    assert second["next_cursor"] is None
    item = second["items"][0]
    assert item["reason"] == "range"
    assert item["error_class"] == "builtins.OverflowError"
    assert item["record"]["input_tokens"] == 2**63
    assert (item["trace_id"], item["span_id"]) == (mine[0].trace_id, mine[0].span_id)

    [their] = rejected(live_server, other_key)
    assert their["record"]["name"] == "theirs\ufffd"  # kept storable
    assert their["error_class"] == "sqlite3.IntegrityError"
    assert their["reason"] == "database_data_error"


def test_bad_requests_are_refused_with_the_reason(live_server: LiveServer) -> None:
    bad = [("cursor=abc", "cursor"), ("cursor=" + "9" * 19, "cursor"), ("limit=0", "limit"),
           ("since=1", "since")]  # fmt: skip
    for query, word in bad:
        status, _, body = http(
            "GET", f"{live_server.url}/api/v1/ingest/rejects?{query}", headers=live_server.headers()
        )
        assert status == 400, body
        assert word in orjson.loads(body)["error"]["message"]
    status, _, _ = http("GET", f"{live_server.url}/api/v1/ingest/rejects")
    assert status == 401
    status, _, _ = http(
        "GET", f"{live_server.url}/api/v1/ingest/rejects", headers={"Authorization": "Bearer x"}
    )
    assert status == 401


def test_the_route_is_in_the_openapi_document_and_the_counter_on_metrics(
    live_server: LiveServer,
) -> None:
    status, document = get(live_server, "/api/v1/openapi.json")
    assert status == 200
    operation = document["paths"]["/api/v1/ingest/rejects"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"limit", "cursor"}
    assert "RejectPage" in document["components"]["schemas"]
    _, _, metrics = http("GET", live_server.url + "/metrics")
    text = metrics.decode()
    for reason in ("nul", "encoding", "range", "length", "database_data_error"):
        assert f'bastion_ingest_rejected_total{{reason="{reason}"}} 0.0' in text
    for gauge in ("segments", "spans", "bytes", "oldest_age_seconds"):
        assert f"bastion_ingest_spool_{gauge} 0.0" in text


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "ingest", "rejects", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_lists_rejects_from_the_server_and_from_the_store(live_server: LiveServer) -> None:
    other_key, _, _ = _seed(live_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update(
        BASTION_HOME=str(live_server.settings.home),
        BASTION_DATABASE_URL=live_server.settings.resolved_database_url,
        COLUMNS="200",
    )
    remote = _cli("--json", "--url", live_server.url, "--key", other_key, env=env)
    assert remote.returncode == 0, remote.stderr
    assert [r["record"]["name"] for r in orjson.loads(remote.stdout)["items"]] == ["theirs\ufffd"]

    local = _cli("--json", "--project", "default", "--limit", "2", env=env)
    assert local.returncode == 0, local.stderr
    page = orjson.loads(local.stdout)
    assert [r["record"]["name"] for r in page["items"]] == ["mine-2", "mine-1"]
    table = _cli("--project", "default", "--cursor", page["next_cursor"], env=env)
    assert table.returncode == 0, table.stderr
    assert "mine-0" in table.stdout
    assert "range" in table.stdout

    bad = _cli("--cursor", "not-a-cursor", env=env)
    assert bad.returncode == 2
    assert "cursor" in bad.stderr
    missing = _cli("--project", "nobody", env=env)
    assert missing.returncode == 1
    assert "nobody" in missing.stderr
