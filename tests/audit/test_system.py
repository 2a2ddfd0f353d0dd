"""Automatic decisions: the background writer, and the gateway's breakers and budgets."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from bastion.audit import AuditChain, AuditEvent, SystemAuditWriter, digest, verify
from bastion.auth import ensure_project
from bastion.settings import load_settings
from bastion.store import migrate
from bastion.store.engine import create_engine
from tests.audit.support import rows
from tests.conftest import LiveServer, PgOutage, start_live_server

CHAIN = AuditChain()


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        "system:breaker", "breaker.open", "deployment", f"p/m{i}", details={"to_state": "open"}
    )


def _wait(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_queued_events_are_appended_in_order(engine: sa.Engine) -> None:
    writer = SystemAuditWriter(engine, CHAIN, batch=3)
    writer.start()
    try:
        assert all(writer.submit(_event(i)) for i in range(10))
        assert writer.flush(20)
    finally:
        assert writer.close() == 0
    stored = rows(engine)
    assert [r["object_id"] for r in stored] == [f"p/m{i}" for i in range(10)]
    ids = {orjson.loads(r["details"])["event_id"] for r in stored}
    assert len(ids) == 10  # each event carries its own id, to tell a retried duplicate
    with engine.connect() as conn:
        assert verify(conn, CHAIN).intact
    assert not writer.submit(_event(99))  # closed: nothing more is taken


def test_a_full_queue_drops_counts_and_keeps_the_rest(engine: sa.Engine) -> None:
    registry = CollectorRegistry()
    writer = SystemAuditWriter(engine, CHAIN, max_pending=3, registry=registry)
    assert [writer.submit(_event(i)) for i in range(5)] == [True, True, True, False, False]
    assert registry.get_sample_value("bastion_audit_system_events_dropped_total") == 2
    assert registry.get_sample_value("bastion_audit_system_events_pending") == 3
    writer.start()
    assert writer.flush(20)
    writer.close()
    assert [r["object_id"] for r in rows(engine)] == ["p/m0", "p/m1", "p/m2"]


def test_malformed_events_are_refused_at_submit(engine: sa.Engine) -> None:
    writer = SystemAuditWriter(engine, CHAIN)
    with pytest.raises(ValueError, match="actor"):
        writer.submit(AuditEvent("breaker", "breaker.open", "deployment", "x"))
    assert writer.pending == 0


def test_events_wait_out_a_database_outage(pg_outage: PgOutage) -> None:
    engine = create_engine(pg_outage.url, connect_args={"connect_timeout": 2})
    migrate.upgrade(engine)
    registry = CollectorRegistry()
    writer = SystemAuditWriter(engine, CHAIN, retry_max_s=0.5, registry=registry)
    writer.start()
    try:
        pg_outage.down()
        for i in range(5):
            assert writer.submit(_event(i))  # never waits for the database
        _wait(
            lambda: (
                (registry.get_sample_value("bastion_audit_system_write_failures_total") or 0) >= 2
            )
        )
        assert writer.pending == 5
        pg_outage.up()
        assert writer.flush(30)
    finally:
        writer.close()
    stored = rows(engine)
    engine.dispose()
    assert [r["object_id"] for r in stored] == [f"p/m{i}" for i in range(5)]


# -- the gateway ------------------------------------------------------------------------------

GATEWAY_CONFIG = """
gateway: {{simulator: true, read_timeout_s: 5}}
providers:
  nowhere: {{type: openai, base_url: "http://127.0.0.1:{port}/v1"}}
models:
  dead:
    deployments: [{{provider: nowhere, model: gone}}]
    retries: 0
    timeout: {{connect_s: 0.5}}
    breaker: {{error_rate: 0.5, window_s: 30, min_requests: 2, cooldown_s: 300}}
budgets:
  - {{scope: feature, match: blocked, period: day, limit_usd: 0.000000001, on_exceed: block}}
  - scope: feature
    match: cheap
    period: day
    limit_usd: 0.000000001
    on_exceed: {{degrade_to: sim-large}}
  - {{scope: user, match: alice@example.com, period: day, limit_usd: 0.000000001}}
"""


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens there once the socket closes
    config = tmp_path / "bastion.yaml"
    config.write_text(GATEWAY_CONFIG.format(port=closed_port))
    settings = load_settings(config, home=tmp_path / "home", database_url=db_url)
    server, stop = start_live_server(settings)
    try:
        yield server
    finally:
        stop()


def _chat(server: LiveServer, model: str, **headers: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=orjson.dumps(body),
        headers={**server.headers(), "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            exc.read()
            return int(exc.code)


def _records(server: LiveServer, action: str) -> list[dict[str, Any]]:
    return [r for r in rows(server.state.engine) if r["action"] == action]


def test_breaker_transitions_are_recorded_off_the_request_path(gateway: LiveServer) -> None:
    statuses = [_chat(gateway, "dead") for _ in range(3)]
    assert statuses[-1] == 503  # the breaker is open: refused without trying
    _wait(lambda: bool(_records(gateway, "breaker.open")))
    (opened,) = _records(gateway, "breaker.open")
    assert (opened["actor"], opened["object_type"], opened["object_id"]) == (
        "system:breaker", "deployment", "nowhere/gone"
    )  # fmt: skip
    assert opened["project_id"] is None
    assert orjson.loads(opened["details"])["from_state"] == "closed"
    assert "failed" in opened["reason"]


def test_budget_warnings_blocks_and_degrades_are_recorded(gateway: LiveServer) -> None:
    # The first request of each is admitted (nothing spent yet); its cost exhausts the budget.
    blocked = [_chat(gateway, "sim-small", **{"x-bastion-feature": "blocked"}) for _ in range(4)]
    assert blocked[1:] == [429, 429, 429]
    for _ in range(3):
        assert _chat(gateway, "sim-small", **{"x-bastion-feature": "cheap"}) == 200
    person = [
        _chat(gateway, "sim-small", **{"x-bastion-user": "alice@example.com"}) for _ in range(2)
    ]
    assert person[-1] == 429
    _wait(lambda: len(_records(gateway, "budget.block")) == 2)
    _wait(lambda: len(_records(gateway, "budget.degrade")) == 1)
    time.sleep(0.3)  # a duplicate record would have been appended by now
    blocks = _records(gateway, "budget.block")
    assert len(blocks) == 2  # once per budget, value and period, not once per request
    with gateway.state.engine.connect() as conn:
        project_id = ensure_project(conn)
    details = [orjson.loads(r["details"]) for r in blocks]
    assert (details[0]["scope"], details[0]["value"]) == ("feature", "blocked")
    # A person's budget value is personal data: only its digest is kept.
    assert details[1]["value_digest"] == digest("alice@example.com")
    assert "alice" not in repr(rows(gateway.state.engine))
    (degraded,) = _records(gateway, "budget.degrade")
    assert orjson.loads(degraded["details"])["degraded_to"] == "sim-large"
    assert {(r["actor"], r["project_id"]) for r in [*blocks, degraded]} == {
        ("system:budget", project_id)
    }
    warned = [orjson.loads(r["details"]) for r in _records(gateway, "budget.warn")]
    assert [w["threshold_percent"] for w in warned if w.get("value") == "blocked"] == [
        50, 75, 90, 100
    ]  # fmt: skip
    with gateway.state.engine.connect() as conn:
        assert verify(conn, gateway.state.audit).intact
