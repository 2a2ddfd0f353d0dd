"""Approvals of protected label moves over real HTTP, on SQLite and PostgreSQL: the change is
refused without one; a request binds an approval to exactly one move; it is decided by a
second person with the policy's role; the move uses it once, in its own transaction. And the
attacks: approving one's own change, a role too low, a key deciding, an approval replayed on
another move, or used after the label moved on, or after it expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bastion.auth import Role
from bastion.store.schema import approvals
from tests.access.support import (
    Caller,
    ServerFactory,
    add_people,
    audit_actions,
    error,
    key,
    person,
)
from tests.conftest import LiveServer

POLICY = {"protected_labels": ["production"], "label_move": {"approver_role": "admin"}}
LABEL = "/api/v1/prompts/greeting/labels/production"


def push_versions(caller: Caller, count: int = 3) -> None:
    for n in range(1, count + 1):
        spec = {"name": "greeting", "text": f"Hello {{{{ who }}}} ({n})", "variables": {"who": {}}}
        response = caller.call("POST", "/api/v1/prompts", {"prompts": [spec]})
        assert response.status_code == 201, response.text


def ask(caller: Caller, version: int, label: str = "production") -> dict[str, Any]:
    body = {"action": "label.move", "prompt": "greeting", "label": label, "version": version}
    response = caller.call("POST", "/api/v1/approvals", body)
    assert response.status_code == 201, response.text
    doc: dict[str, Any] = response.json()
    return doc


def decide(caller: Caller, approval_id: str, verb: str = "approve") -> Any:
    return caller.call("POST", f"/api/v1/approvals/{approval_id}/{verb}", {"reason": "ok"})


def production(server: LiveServer) -> int | None:
    admin = key(server, Role.READ)
    labels = admin.call("GET", "/api/v1/prompts/greeting/log").json()["labels"]
    found = [s["version"] for s in labels if s["label"] == "production"]
    return found[0] if found else None


@pytest.fixture
def site(serve: ServerFactory) -> tuple[LiveServer, dict[str, Caller]]:
    server = serve(approvals=POLICY)
    add_people(server)
    people = {name: person(server, name) for name in ("olga", "alan", "ada", "grace", "vic")}
    push_versions(people["ada"])
    return server, people


def approved_move(people: dict[str, Caller], version: int) -> str:
    """An approval of moving production to ``version``, asked by ada, approved by olga."""
    asked = ask(people["ada"], version)
    assert decide(people["olga"], asked["id"]).status_code == 200
    return str(asked["id"])


def test_a_protected_label_moves_only_with_an_approval_of_that_move(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    server, people = site
    ada, alan = people["ada"], people["alan"]
    refused = ada.call("PUT", LABEL, {"version": 1})
    assert refused.status_code == 403
    assert "labels.move_protected" in error(refused)
    assert "projects.default.approvals.protected_labels" in error(refused)
    needed = alan.call("PUT", LABEL, {"version": 1})
    assert needed.status_code == 409, needed.text
    assert needed.json()["error"]["type"] == "approval_required"
    assert "projects.default.approvals.label_move" in error(needed)
    assert "POST /api/v1/approvals" in error(needed)
    assert production(server) is None

    asked = ask(ada, 1)
    assert asked["status"] == "pending"
    assert asked["requested_by"] == "user:ada"
    assert asked["change"]["binding"]["from_version"] is None
    assert asked["change"]["binding"]["to_version"] == 1
    assert asked["change_hash"].startswith("sha256:")
    again = ada.call("POST", "/api/v1/approvals", {**_body(1)})
    assert again.status_code == 409
    assert f"approval {asked['id']}" in error(again)

    done = decide(alan, asked["id"])
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["decided_by"]) == ("approved", "user:alan")
    moved = key(server, Role.ADMIN).call("PUT", LABEL, {"version": 1, "approval": asked["id"]})
    assert moved.status_code == 200, moved.text
    assert production(server) == 1
    shown = ada.call("GET", f"/api/v1/approvals/{asked['id']}").json()
    assert shown["status"] == "used"
    actions = [(actor, action) for actor, action, _ in audit_actions(server)]
    for entry in (
        ("user:ada", "approval.request"),
        ("user:alan", "approval.approve"),
        ("key:", "approval.use"),
    ):
        assert any(a.startswith(entry[0]) and b == entry[1] for a, b in actions), entry
    use = next(i for i, (_, b) in enumerate(actions) if b == "approval.use")
    assert actions[use - 1][1] == "label.move"  # the move and its approval, one transaction


def _body(version: int) -> dict[str, Any]:
    return {"action": "label.move", "prompt": "greeting", "label": "production", "version": version}


def test_no_one_approves_their_own_change_nor_with_a_role_too_low(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    server, people = site
    asked = ask(people["alan"], 2)
    own = decide(people["alan"], asked["id"])
    assert own.status_code == 403
    assert "a second person must approve" in error(own)
    low = decide(people["grace"], asked["id"])
    assert low.status_code == 403
    assert "needs the role 'admin' or higher" in error(low)
    assert decide(people["vic"], asked["id"]).status_code == 403  # no approvals.decide
    by_key = decide(key(server, Role.ADMIN), asked["id"])
    assert by_key.status_code == 403
    assert "approvals.decide" in error(by_key)
    assert people["ada"].call("GET", f"/api/v1/approvals/{asked['id']}").json()["status"] == (
        "pending"
    )
    assert not [a for a in audit_actions(server) if a[1] == "approval.approve"]


def test_an_approval_is_refused_for_any_other_change_and_once_used(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    server, people = site
    alan = people["alan"]
    first = approved_move(people, 1)
    other = alan.call("PUT", LABEL, {"version": 2, "approval": first})
    assert other.status_code == 409
    assert "approves another change" in error(other)
    assert production(server) is None  # refused whole: nothing moved
    elsewhere = alan.call(
        "PUT", "/api/v1/prompts/greeting/labels/staging", {"version": 1, "approval": first}
    )
    assert elsewhere.status_code == 200  # staging is not protected: the approval is not used
    assert alan.call("GET", f"/api/v1/approvals/{first}").json()["status"] == "approved"
    assert alan.call("PUT", LABEL, {"version": 1, "approval": first}).status_code == 200
    replay = alan.call("PUT", LABEL, {"version": 2, "approval": first})
    assert replay.status_code == 409
    assert "is used, not approved" in error(replay)
    assert production(server) == 1


def test_an_approval_is_void_once_the_label_moved_on(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    server, people = site
    alan = people["alan"]
    assert (
        alan.call("PUT", LABEL, {"version": 1, "approval": approved_move(people, 1)}).status_code
        == 200
    )
    to_two = approved_move(people, 2)
    to_three = approved_move(people, 3)
    assert alan.call("PUT", LABEL, {"version": 3, "approval": to_three}).status_code == 200
    late = alan.call("PUT", LABEL, {"version": 2, "approval": to_two})
    assert late.status_code == 409
    assert "from_version=1" in error(late)  # the approved move
    assert "from_version=3" in error(late)  # the move it would be now
    assert production(server) == 3


def test_rejected_withdrawn_and_expired_approvals_serve_nothing(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    server, people = site
    ada, grace, alan = people["ada"], people["grace"], people["alan"]
    withdrawn = ask(ada, 1)
    assert decide(grace, withdrawn["id"], "reject").status_code == 403  # not hers, role too low
    assert decide(ada, withdrawn["id"], "reject").json()["status"] == "rejected"
    assert decide(alan, withdrawn["id"]).status_code == 409  # decided already
    used = alan.call("PUT", LABEL, {"version": 1, "approval": withdrawn["id"]})
    assert used.status_code == 409
    assert "is rejected" in error(used)

    stale = approved_move(people, 1)
    with server.state.engine.begin() as conn:
        conn.execute(
            approvals.update()
            .where(approvals.c.id == stale)
            .values(created_at=datetime.now(UTC) - timedelta(hours=73))
        )
    expired = alan.call("PUT", LABEL, {"version": 1, "approval": stale})
    assert expired.status_code == 409
    assert "is expired" in error(expired)
    listed = ada.call("GET", "/api/v1/approvals", params={"status": "expired"}).json()["items"]
    assert [a["id"] for a in listed] == [stale]


def test_rollbacks_need_the_right_but_no_approval(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    server, people = site
    alan = people["alan"]
    assert (
        alan.call("PUT", LABEL, {"version": 1, "approval": approved_move(people, 1)}).status_code
        == 200
    )
    assert (
        alan.call("PUT", LABEL, {"version": 2, "approval": approved_move(people, 2)}).status_code
        == 200
    )
    refused = people["ada"].call("POST", LABEL + "/rollback", {})
    assert refused.status_code == 403
    assert alan.call("POST", LABEL + "/rollback", {"reason": "incident"}).status_code == 200
    assert production(server) == 1


def test_a_label_protected_through_the_api_is_governed_too(
    site: tuple[LiveServer, dict[str, Caller]],
) -> None:
    _, people = site
    ada, alan = people["ada"], people["alan"]
    canary = "/api/v1/prompts/greeting/labels/canary"
    assert ada.call("PUT", canary, {"version": 1}).status_code == 200
    assert alan.call("POST", canary + "/protect", {}).status_code == 200
    assert ada.call("PUT", canary, {"version": 2}).status_code == 403
    assert alan.call("PUT", canary, {"version": 2}).status_code == 409
    asked = ask(ada, 2, label="canary")
    assert "greeting@v1" in asked["change"]["diff"]
    assert "(2)" in asked["change"]["diff"]
    assert decide(people["olga"], asked["id"]).status_code == 200
    assert alan.call("PUT", canary, {"version": 2, "approval": asked["id"]}).status_code == 200
    unprotected = ada.call("POST", "/api/v1/approvals", {**_body(1), "label": "staging"})
    assert unprotected.status_code == 400
    assert "not protected" in error(unprotected)


def test_approvals_stay_in_their_project(site: tuple[LiveServer, dict[str, Caller]]) -> None:
    server, people = site
    approval = approved_move(people, 1)
    stranger = key(server, Role.ADMIN, project="other")
    assert stranger.call("GET", f"/api/v1/approvals/{approval}").status_code == 404
    assert stranger.call("GET", "/api/v1/approvals").json()["items"] == []
    bad = people["ada"].call("GET", "/api/v1/approvals/not-an-id")
    assert bad.status_code == 400
    assert "32 lower-case hex" in error(bad)


def test_a_member_never_approves_their_own_change(serve: ServerFactory) -> None:
    rule = {"approver_role": "member"}
    server = serve(approvals={"protected_labels": ["production"], "label_move": rule})
    add_people(server)
    ada, grace = person(server, "ada"), person(server, "grace")
    push_versions(ada)
    asked = ask(ada, 1)
    own = decide(ada, asked["id"])
    assert own.status_code == 403
    assert "user:ada asked for this change" in error(own)
    assert decide(person(server, "vic"), asked["id"]).status_code == 403
    approved = decide(grace, asked["id"])
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_by"] == "user:grace"
    moved = person(server, "alan").call("PUT", LABEL, {"version": 1, "approval": asked["id"]})
    assert moved.status_code == 200, moved.text
