"""Eval scores attached to the prompt versions evaluated: in ``prompt_usage``, its API and the
``bastion prompts usage`` table (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bastion.auth import ensure_project
from bastion.cli.main import app
from bastion.evals import store
from bastion.evals.datasets import Item
from bastion.prompts.usage import prompt_usage
from tests.conftest import LiveServer
from tests.prompts.test_prompt_api import call
from tests.prompts.test_usage import populate


def add_run(
    engine: sa.Engine,
    project_id: int,
    version: int,
    mean: float,
    *,
    dataset: str = "golden",
    kind: str = "quality",
    status: str = "completed",
) -> str:
    pushed = store.push_dataset(engine, project_id, dataset, [Item(id="a", vars={"q": "x"})])
    run_id = store.create_run(
        engine, project_id, target_key="summarize@production",
        target={"kind": "prompt", "name": "summarize", "label": "production",
                "version": version, "model": "m"},
        target_hash="sha256:t", dataset=pushed.info, scorers=[], params={}, repeats=1,
        kind=kind,  # type: ignore[arg-type]
    )  # fmt: skip
    summary: dict[str, Any] = {"metrics": {"equals": {"mean": mean, "pass_rate": mean, "n": 4}}}
    store.finish_run(engine, project_id, run_id, status, summary)  # type: ignore[arg-type]
    return run_id


def scored(engine: sa.Engine) -> dict[str, str]:
    project_id = populate(engine)
    with engine.begin() as conn:
        other = ensure_project(conn, "other")
    runs = {
        "v1-old": add_run(engine, project_id, 1, 0.5),
        "v1-new": add_run(engine, project_id, 1, 0.9),
        "v1-failed": add_run(engine, project_id, 1, 0.1, status="failed"),
        "v1-redteam": add_run(engine, project_id, 1, 1.0, dataset="redteam-all", kind="redteam"),
        "v2": add_run(engine, project_id, 2, 0.7),
        "other-project": add_run(engine, other, 1, 0.0),
    }
    return runs


def test_usage_carries_the_latest_scores_per_version(engine: sa.Engine) -> None:
    runs = scored(engine)
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    with engine.connect() as conn:
        usage = prompt_usage(conn, project_id, "summarize")
    by_version = {v.version: v for v in usage.versions}
    v1 = by_version[1].evals
    assert sorted((e.dataset, e.kind, e.run_id) for e in v1) == [
        ("golden@1", "quality", runs["v1-new"]),  # the newest completed run, not the failed one
        ("redteam-all@1", "redteam", runs["v1-redteam"]),
    ]
    golden = next(e for e in v1 if e.kind == "quality")
    assert golden.metrics == {"equals": pytest.approx(0.9)}
    assert golden.pass_rates == {"equals": pytest.approx(0.9)}
    assert [(e.run_id, e.metrics["equals"]) for e in by_version[2].evals] == [(runs["v2"], 0.7)]
    assert by_version[None].evals == []


def test_scores_over_http_and_in_the_cli(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = scored(live_server.state.engine)
    status, out = call(live_server, "GET", "/api/v1/prompts/summarize/usage")
    assert status == 200, out
    v1 = next(v for v in out["versions"] if v["version"] == 1)
    assert {e["run_id"] for e in v1["evals"]} == {runs["v1-new"], runs["v1-redteam"]}

    monkeypatch.setenv("COLUMNS", "300")
    remote = ["--url", live_server.url, "--key", live_server.admin_key]
    table = CliRunner().invoke(app, ["prompts", "usage", "summarize", *remote])
    assert table.exit_code == 0, table.output
    assert "eval scores" in table.output
    assert "golden@1: equals 0.90" in table.output
    assert "golden@1: equals 0.70" in table.output
    assert "redteam-all@1 (red team): equals 1.00" in table.output
    as_json = CliRunner().invoke(app, ["prompts", "usage", "summarize", "--json", *remote])
    data = orjson.loads(as_json.output)
    assert data["versions"][0]["evals"][0]["run_id"] == runs["v2"]
