"""The eval gate an approval rule requires, over real HTTP on SQLite and PostgreSQL: no run of
the new version (or of what it replaces) on the named dataset, a run worse than the current
one, or pass rates under the floor, each refuse the change with a message saying which; a
passing gate lets it through; with an approver too, the request is gated and keeps the
evidence."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.auth import Role, ensure_project
from bastion.evals import store
from bastion.evals.scorers.base import Score
from tests.access.support import Caller, ServerFactory, add_people, error, key, person
from tests.access.test_label_approvals import LABEL, push_versions
from tests.conftest import LiveServer

ITEMS = [{"id": f"q{n}", "vars": {"who": f"w{n}"}, "expected": "x"} for n in range(1, 5)]
GATE = {"dataset": "golden", "min_pass_rate": 0.6}


def record_run(server: LiveServer, target: dict[str, Any], key_: str, values: list[float]) -> str:
    """A completed run of ``target`` on golden scoring item n with ``values[n]``."""
    engine = server.state.engine
    with engine.begin() as conn:
        pid = ensure_project(conn, "default")
        dataset = store.get_dataset(conn, pid, "golden")
    run_id = store.create_run(
        engine, pid, target_key=key_, target=target, target_hash="sha256:t", dataset=dataset.info,
        scorers=[{"type": "equals"}], params={}, repeats=1,
    )  # fmt: skip
    results = [
        store.RecordedResult(
            item_id=f"q{n}",
            repeat=0,
            output="x",
            cache_key=f"{run_id}{n}",
            scores=(Score("equals", value, value >= 0.5, "r", {}),),
        )
        for n, value in enumerate(values, start=1)
    ]
    store.record_results(engine, pid, run_id, results)
    rate = sum(v >= 0.5 for v in values) / len(values)
    summary = {"metrics": {"equals": {"mean": sum(values) / len(values), "pass_rate": rate}}}
    store.finish_run(engine, pid, run_id, "completed", summary)
    return run_id


def prompt_run(server: LiveServer, version: int, values: list[float]) -> str:
    target = {"kind": "prompt", "name": "greeting", "version": version, "model": "m"}
    return record_run(server, target, f"greeting:{version}", values)


def with_golden(server: LiveServer) -> Caller:
    writer = key(server, Role.ADMIN)
    push_versions(writer)
    pushed = writer.call("POST", "/api/v1/evals/datasets", {"name": "golden", "items": ITEMS})
    assert pushed.status_code == 201, pushed.text
    return writer


def test_a_label_moves_only_past_a_passing_gate(serve: ServerFactory) -> None:
    server = serve(
        approvals={
            "protected_labels": ["production"],
            "label_move": {"approver_role": None, "eval_gate": GATE},
        }
    )
    admin = with_golden(server)
    missing = admin.call("PUT", LABEL, {"version": 1})
    assert missing.status_code == 409
    assert "needs a completed eval run" in error(missing)
    assert "greeting:1 on dataset 'golden'" in error(missing)
    prompt_run(server, 1, [1, 1, 0, 0])
    low = admin.call("PUT", LABEL, {"version": 1})
    assert low.status_code == 409
    assert "equals passes 0.500 < 0.6" in error(low)
    prompt_run(server, 1, [1, 1, 1, 0])  # the newest run counts
    assert admin.call("PUT", LABEL, {"version": 1}).status_code == 200

    no_run = admin.call("PUT", LABEL, {"version": 2})
    assert no_run.status_code == 409
    assert "greeting:2" in error(no_run)
    prompt_run(server, 2, [0, 0, 0, 0])
    worse = admin.call("PUT", LABEL, {"version": 2})
    assert worse.status_code == 409
    assert "eval gate of projects.default.approvals.label_move failed" in error(worse)
    prompt_run(server, 3, [1, 1, 1, 1])
    better = admin.call("PUT", LABEL, {"version": 3})
    assert better.status_code == 200, better.text
    assert better.json()["to_version"] == 3
    # A label the policy does not protect needs no gate.
    assert (
        admin.call("PUT", "/api/v1/prompts/greeting/labels/beta", {"version": 2}).status_code == 200
    )


def test_with_an_approver_the_request_is_gated_and_keeps_the_evidence(
    serve: ServerFactory,
) -> None:
    rule = {"approver_role": "admin", "eval_gate": {"dataset": "golden"}}
    server = serve(approvals={"protected_labels": ["production"], "label_move": rule})
    admin = with_golden(server)
    add_people(server)
    ada, alan = person(server, "ada"), person(server, "alan")
    body = {"action": "label.move", "prompt": "greeting", "label": "production", "version": 1}
    gated = ada.call("POST", "/api/v1/approvals", body)
    assert gated.status_code == 409
    assert "needs a completed eval run" in error(gated)
    run_id = prompt_run(server, 1, [1, 1, 1, 1])
    asked = ada.call("POST", "/api/v1/approvals", body)
    assert asked.status_code == 201, asked.text
    evidence = asked.json()["change"]["gate"]
    assert (evidence["candidate_run"], evidence["baseline_run"], evidence["passed"]) == (
        run_id, None, True,
    )  # fmt: skip
    assert admin.call("PUT", LABEL, {"version": 1}).status_code == 409  # the approver still
    assert (
        alan.call("POST", f"/api/v1/approvals/{asked.json()['id']}/approve", {}).status_code == 200
    )
    moved = admin.call("PUT", LABEL, {"version": 1, "approval": asked.json()["id"]})
    assert moved.status_code == 200, moved.text


@pytest.fixture
def route_site(serve: ServerFactory) -> tuple[LiveServer, Caller, str, str]:
    rule = {"approver_role": None, "eval_gate": {"dataset": "golden"}}
    server = serve(approvals={"rollout_start": rule})
    admin = with_golden(server)
    ids = []
    for top_p in (1.0, 0.5):
        spec = {
            "name": "support",
            "prompts": {"greeting": 1},
            "model": "chat",
            "params": {"top_p": top_p},
        }
        ids.append(admin.call("POST", "/api/v1/releases", {"spec": spec}).json()["release_id"])
    return server, admin, ids[0], ids[1]


def release_run(server: LiveServer, release_id: str, values: list[float]) -> str:
    target = {"kind": "release", "release_id": release_id, "prompt": "greeting", "version": 1}
    return record_run(server, target, f"release:{release_id}/greeting", values)


def test_a_deploy_and_a_rollout_pass_the_gate_on_their_releases(
    route_site: tuple[LiveServer, Caller, str, str],
) -> None:
    server, admin, stable, candidate = route_site
    deploy = admin.call("POST", "/api/v1/routes/help/deploy", {"release": stable})
    assert deploy.status_code == 409
    assert f"release:{stable}" in error(deploy)
    prompt_run(server, 1, [1, 1, 1, 1])  # a run of the prompt alone is not the release's
    assert admin.call("POST", "/api/v1/routes/help/deploy", {"release": stable}).status_code == 409
    release_run(server, stable, [1, 1, 1, 0])
    assert admin.call("POST", "/api/v1/routes/help/deploy", {"release": stable}).status_code == 200
    start = {"candidate": candidate, "steps": [10, 100], "bake": "1s"}
    release_run(server, candidate, [0, 0, 0, 0])
    worse = admin.call("POST", "/api/v1/routes/help/rollout", start)
    assert worse.status_code == 409
    assert "failed" in error(worse)
    release_run(server, candidate, [1, 1, 1, 1])
    started = admin.call("POST", "/api/v1/routes/help/rollout", start)
    assert started.status_code == 201, started.text
