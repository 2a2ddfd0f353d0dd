"""Lineage and usage per prompt version, on both databases, from spans written by SpanWriter."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bastion.auth import Role, ensure_project
from bastion.cli.main import app
from bastion.prompts import PromptSpec, registry
from bastion.prompts.usage import parse_since, prompt_usage
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode
from tests.conftest import LiveServer
from tests.prompts.test_prompt_api import call

HOUR_NS = 3600 * 1_000_000_000
NOW_NS = time.time_ns()


def spec(text: str) -> PromptSpec:
    return PromptSpec.from_dict({"name": "summarize", "text": text})


def span(
    n: int,
    version: int | None,
    latency_ms: int,
    *,
    name: str = "summarize",
    trace: str | None = None,
    ago_ns: int = HOUR_NS,
    status: StatusCode = StatusCode.OK,
    error_class: str | None = None,
) -> Span:
    start = NOW_NS - ago_ns + n * 1_000_000
    return Span(
        trace_id=trace or f"{n:032x}",
        span_id=f"{n:016x}",
        name="chat",
        start_ns=start,
        end_ns=start + latency_ms * 1_000_000,
        status_code=status,
        operation="chat",
        request_model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        cost_usd=0.001,
        error_class=error_class,
        prompt_name=name,
        prompt_version=version,
    )


def populate(engine: sa.Engine) -> int:
    """Two versions with a deploy history, and spans for each, for another prompt and project."""
    with engine.begin() as conn:
        project_id = ensure_project(conn)
        other_project = ensure_project(conn, "other")

    def write(work: object) -> None:
        registry.run_write(engine, work)  # type: ignore[arg-type]

    def move(version: int, label: str = "production") -> None:
        write(
            lambda c: registry.set_label(
                c, project_id, "summarize", version, label, actor="ci", role=Role.ADMIN
            )
        )

    write(lambda c: registry.push(c, project_id, [spec("one")], message="v1", author="a"))
    move(1)
    write(lambda c: registry.push(c, project_id, [spec("two")], message="v2", author="a"))
    move(2)
    move(1, "staging")
    write(
        lambda c: registry.rollback(
            c, project_id, "summarize", "production", actor="ops", reason="bad", role=Role.ADMIN
        )
    )
    batch: list[tuple[int, Span]] = []
    for i in range(1, 21):  # v1: latencies 10..200 ms, two errors, spans 19 and 20 share a trace
        trace = f"{19:032x}" if i == 20 else None
        status = StatusCode.ERROR if i == 3 else StatusCode.OK
        error_class = "upstream_error" if i == 7 else None
        batch.append((project_id, span(i, 1, i * 10, trace=trace, status=status,
                                       error_class=error_class)))  # fmt: skip
    for i, latency in zip((31, 32, 33), (100, 300, 200), strict=True):
        batch.append((project_id, span(i, 2, latency)))
    batch.append((project_id, span(40, None, 50)))  # named the prompt, not a version
    batch.append((project_id, span(41, 1, 999, ago_ns=72 * HOUR_NS)))  # older than 24h
    batch.append((project_id, span(42, 1, 999, name="other-prompt")))
    batch.append((other_project, span(43, 1, 999)))
    SpanWriter(engine).write(batch)
    return project_id


def test_usage_per_version(engine: sa.Engine) -> None:
    project_id = populate(engine)
    since = datetime.now(UTC) - timedelta(hours=24)
    with engine.connect() as conn:
        usage = prompt_usage(conn, project_id, "summarize", since=since, recent=3)
    assert [v.version for v in usage.versions] == [2, 1, None]
    v2, v1, unversioned = usage.versions

    assert (v1.span_count, v1.trace_count, v1.error_count) == (20, 19, 2)
    assert v1.error_rate == pytest.approx(0.1)
    assert v1.p95_latency_ms == pytest.approx(190.0)  # nearest rank: the 19th of 20
    assert (v1.input_tokens, v1.output_tokens) == (200, 100)
    assert v1.cost_usd == pytest.approx(0.02)
    assert v1.recent_trace_ids == [f"{19:032x}", f"{18:032x}", f"{17:032x}"]
    assert v1.first_seen is not None
    assert v1.last_seen is not None
    assert v1.first_seen < v1.last_seen
    assert v1.labels == ["production", "staging"]
    assert [(d.label, d.action, d.from_version, d.until is None) for d in v1.deployments] == [
        ("production", "set", None, False),
        ("staging", "set", None, True),
        ("production", "rollback", 2, True),
    ]
    assert v1.deployments[2].reason == "bad"
    assert (v1.content_hash or "").startswith("sha256:")

    assert (v2.span_count, v2.error_count, v2.error_rate) == (3, 0, 0.0)
    assert v2.p95_latency_ms == pytest.approx(300.0)
    assert v2.labels == []
    assert [(d.label, d.from_version, d.until is not None) for d in v2.deployments] == [
        ("production", 1, True)
    ]
    assert v2.deployments[0].until == v1.deployments[2].at

    assert (unversioned.span_count, unversioned.content_hash) == (1, None)

    with engine.connect() as conn:
        everything = prompt_usage(conn, project_id, "summarize")
    assert everything.versions[1].span_count == 21  # the 72-hour-old span counts without since
    assert everything.versions[1].p95_latency_ms == pytest.approx(200.0)


def test_usage_of_unknown_and_span_only_prompts(engine: sa.Engine) -> None:
    project_id = populate(engine)
    with engine.connect() as conn:
        with pytest.raises(registry.NotFoundError, match="no prompt 'nope'"):
            prompt_usage(conn, project_id, "nope")
        only_spans = prompt_usage(conn, project_id, "other-prompt")
        unused = prompt_usage(conn, project_id, "summarize", since=datetime.now(UTC))
    assert [(v.version, v.span_count, v.content_hash) for v in only_spans.versions] == [
        (1, 1, None)
    ]
    assert [(v.version, v.span_count, v.p95_latency_ms) for v in unused.versions] == [
        (2, 0, None),
        (1, 0, None),
    ]


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_since("24h", now=now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(registry.RegistryError, match="use 30m, 24h, 7d"):
        parse_since("yesterday")


def test_usage_over_http_and_cli(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(live_server.state.engine)
    status, out = call(live_server, "GET", "/api/v1/prompts/summarize/usage?since=24h&recent=1")
    assert status == 200, out
    assert [(v["version"], v["span_count"]) for v in out["versions"]] == [
        (2, 3),
        (1, 20),
        (None, 1),
    ]
    assert out["versions"][1]["recent_trace_ids"] == [f"{19:032x}"]
    status, out = call(live_server, "GET", "/api/v1/prompts/nope/usage")
    assert status == 404, out
    status, out = call(live_server, "GET", "/api/v1/prompts/summarize/usage?since=soon")
    assert status == 400
    assert "use 30m, 24h, 7d" in out["error"]["message"]

    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(
        app,
        ["prompts", "usage", "summarize", "--since", "24h", "--json", "--url", live_server.url],
        env={"BASTION_API_KEY": live_server.admin_key},
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["versions"][0]["p95_latency_ms"] == pytest.approx(300.0)
    remote = ["--url", live_server.url, "--key", live_server.admin_key]
    table = CliRunner().invoke(app, ["prompts", "usage", "summarize", "--since", "24h", *remote])
    assert table.exit_code == 0, table.output
    for shown in ("v1", "production", "(10.0%)"):
        assert shown in table.output
