"""Approvals of deploys, rollout starts and promotions over real HTTP, on SQLite and
PostgreSQL: bound to the route, environment, stable and candidate releases and the rollout
policy; the release diff shown; refused for another policy, after the stable release moved,
or once used; the safety actions (pause, abort, rollback) need none."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.auth import Role
from bastion.auth.roles import PersonRole
from tests.access.support import Caller, ServerFactory, add_people, error, key, person
from tests.conftest import LiveServer

POLICY = {
    "rollout_start": {"approver_role": "admin"},
    "rollout_promote": {"approver_role": "owner"},
}
ROLLOUT = {"steps": [10, 100], "bake": "1s", "min_requests": 5}


def release(writer: Caller, version: int, top_p: float) -> str:
    spec = {
        "name": "support",
        "prompts": {"answer": version},
        "model": "chat",
        "params": {"top_p": top_p},
    }
    response = writer.call("POST", "/api/v1/releases", {"spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["release_id"])


def approved(people: dict[str, Caller], body: dict[str, Any], by: str = "olga") -> dict[str, Any]:
    asked = people["ada"].call("POST", "/api/v1/approvals", body)
    assert asked.status_code == 201, asked.text
    decided = people[by].call("POST", f"/api/v1/approvals/{asked.json()['id']}/approve", {})
    assert decided.status_code == 200, decided.text
    doc: dict[str, Any] = asked.json()
    return doc


@pytest.fixture
def site(serve: ServerFactory) -> tuple[LiveServer, dict[str, Caller], Caller, list[str]]:
    server = serve(approvals=POLICY)
    add_people(server)
    people = {name: person(server, name) for name in ("olga", "alan", "ada")}
    writer = key(server, Role.WRITE)
    for text in ("Answer: {{ q }}", "Answer briefly: {{ q }}"):
        prompt: dict[str, Any] = {"name": "answer", "text": text, "variables": {"q": {}}}
        assert writer.call("POST", "/api/v1/prompts", {"prompts": [prompt]}).status_code == 201
    releases = [release(writer, 1, 1.0), release(writer, 2, 0.5), release(writer, 2, 0.2)]
    deploy = {"action": "release.deploy", "route": "help", "release": releases[0]}
    first = approved(people, deploy)
    assert first["change"]["binding"]["stable_release_id"] is None
    body = {"release": releases[0], "approval": first["id"]}
    assert writer.call("POST", "/api/v1/routes/help/deploy", body).status_code == 200
    return server, people, writer, releases


def test_a_rollout_starts_only_with_an_approval_of_that_rollout(
    site: tuple[LiveServer, dict[str, Caller], Caller, list[str]],
) -> None:
    _, people, writer, (stable, candidate, _) = site
    start = {"candidate": candidate, **ROLLOUT}
    needed = writer.call("POST", "/api/v1/routes/help/rollout", start)
    assert needed.status_code == 409
    assert "projects.default.approvals.rollout_start" in error(needed)
    asked = approved(people, {"action": "rollout.start", "route": "help", "rollout": start})
    binding = asked["change"]["binding"]
    assert (binding["stable_release_id"], binding["candidate_release_id"]) == (stable, candidate)
    assert binding["policy"]["steps"] == [10.0, 100.0]
    diff = asked["change"]["diff"]
    assert [c["key"] for c in diff["config"]] == ["params.top_p"]
    assert diff["prompts"][0]["template_b"] == "Answer briefly: {{ q }}"

    other_policy = {**start, "steps": [50, 100], "approval": asked["id"]}
    refused = writer.call("POST", "/api/v1/routes/help/rollout", other_policy)
    assert refused.status_code == 409
    assert "approves another change" in error(refused)
    assert writer.call("GET", "/api/v1/routes/help").json()["rollout"] is None
    started = writer.call("POST", "/api/v1/routes/help/rollout", {**start, "approval": asked["id"]})
    assert started.status_code == 201, started.text
    for action in ("pause", "resume"):  # the safety actions need no approval
        assert writer.call("POST", f"/api/v1/routes/help/{action}", {}).status_code == 200
    assert writer.call("POST", "/api/v1/routes/help/abort", {}).status_code == 200
    again = writer.call("POST", "/api/v1/routes/help/rollout", {**start, "approval": asked["id"]})
    assert again.status_code == 409
    assert "is used" in error(again)


def test_a_promotion_needs_the_policys_role_and_binds_the_rollout(
    site: tuple[LiveServer, dict[str, Caller], Caller, list[str]],
) -> None:
    _, people, writer, (_, candidate, _) = site
    start = {"candidate": candidate, **ROLLOUT}
    started = approved(people, {"action": "rollout.start", "route": "help", "rollout": start})
    body = {**start, "approval": started["id"]}
    rollout = writer.call("POST", "/api/v1/routes/help/rollout", body).json()
    needed = writer.call("POST", "/api/v1/routes/help/promote", {})
    assert needed.status_code == 409
    assert "rollout_promote" in error(needed)
    promote = {"action": "rollout.promote", "route": "help"}
    asked = people["ada"].call("POST", "/api/v1/approvals", promote).json()
    assert asked["change"]["binding"]["rollout_id"] == rollout["rollout_id"]
    low = people["alan"].call("POST", f"/api/v1/approvals/{asked['id']}/approve", {})
    assert low.status_code == 403
    assert "needs the role 'owner'" in error(low)
    assert (
        people["olga"].call("POST", f"/api/v1/approvals/{asked['id']}/approve", {}).status_code
        == 200
    )
    done = writer.call("POST", "/api/v1/routes/help/promote", {"approval": asked["id"]})
    assert done.status_code == 200, done.text
    assert done.json()["stable_release_id"] == candidate


def test_an_approval_is_void_once_the_stable_release_moved(
    site: tuple[LiveServer, dict[str, Caller], Caller, list[str]],
) -> None:
    _, people, writer, (_, candidate, third) = site
    start = {"candidate": candidate, **ROLLOUT}
    rollout = approved(people, {"action": "rollout.start", "route": "help", "rollout": start})
    deploy = approved(people, {"action": "release.deploy", "route": "help", "release": third})
    moved = writer.call(
        "POST", "/api/v1/routes/help/deploy", {"release": third, "approval": deploy["id"]}
    )
    assert moved.status_code == 200
    late = writer.call("POST", "/api/v1/routes/help/rollout", {**start, "approval": rollout["id"]})
    assert late.status_code == 409
    assert "approves another change" in error(late)
    assert writer.call("GET", "/api/v1/routes/help").json()["stable_release_id"] == third


def test_requests_are_checked_against_the_policy_and_the_route(serve: ServerFactory) -> None:
    server = serve(approvals={"rollout_promote": {"approver_role": "admin"}})
    add_people(server, {"ada": PersonRole.MEMBER})
    ada = person(server, "ada")
    ungoverned = ada.call(
        "POST", "/api/v1/approvals", {"action": "release.deploy", "route": "help", "release": "x"}
    )
    assert ungoverned.status_code == 400
    assert "rollout_start.approver_role is unset" in error(ungoverned)
    nothing = ada.call("POST", "/api/v1/approvals", {"action": "rollout.promote", "route": "help"})
    assert nothing.status_code == 409
    assert "no rollout in progress" in error(nothing)
    bad = ada.call("POST", "/api/v1/approvals", {"action": "rollout.promote", "route": "Bad Route"})
    assert bad.status_code == 400
    unknown = ada.call("POST", "/api/v1/approvals", {"action": "budget.change"})
    assert unknown.status_code == 400
    assert "action" in error(unknown)
