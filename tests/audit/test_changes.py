"""Every change made through the API leaves one audit record, in the change's transaction."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.audit import HMAC_SHA256, AuditChain, AuditError, AuditTrail, verify
from bastion.auth import Role, create_key, ensure_project
from bastion.prompts import PromptSpec, registry
from bastion.releases import store as release_store
from bastion.releases.model import ReleaseSpec
from bastion.store.schema import api_keys, audit_chain, prompt_versions
from bastion.store.transactions import run_write
from tests.audit.support import SECRET, call, rows
from tests.conftest import LiveServer

PROMPT = {"name": "answer", "text": "Answer: {{ q }}", "variables": {"q": {}}}
RELEASE = {"name": "support", "prompts": {"answer": 1}, "model": "chat"}
# A step the analysis controller cannot decide on during the test.
ROLLOUT = {"steps": [10, 100], "bake": "1h", "min_requests": 1000}


def _key_actor(server: LiveServer) -> str:
    with server.state.engine.connect() as conn:
        key_id = conn.execute(
            sa.select(api_keys.c.id).where(api_keys.c.name == "test-admin")
        ).scalar_one()
    return f"key:{key_id}"


class _Steps:
    """Calls the API, each with its own request id, and remembers what each should record."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.expected: list[tuple[str, str, str, str]] = []  # (request id, action, type, id)
        self.count = 0

    def do(
        self, method: str, path: str, body: Any, status: int, *records: tuple[str, str, str]
    ) -> Any:
        self.count += 1
        request_id = f"req-{self.count}"
        got, answer = call(self.server, method, path, body, request_id=request_id)
        assert got == status, answer
        self.expected += [(request_id, *r) for r in records]
        return answer


def _prompts_and_datasets(steps: _Steps) -> None:
    steps.do(
        "POST", "/api/v1/prompts", {"prompts": [PROMPT]}, 201, ("prompt.push", "prompt", "answer")
    )
    steps.do("POST", "/api/v1/prompts", {"prompts": [PROMPT]}, 200)  # unchanged: nothing
    v2 = {**PROMPT, "text": "Answer briefly: {{ q }}"}
    steps.do("POST", "/api/v1/prompts", {"prompts": [v2]}, 201, ("prompt.push", "prompt", "answer"))
    label = "/api/v1/prompts/answer/labels/production"
    steps.do("PUT", label, {"version": 1}, 200, ("label.move", "label", "answer:production"))
    steps.do("PUT", label, {"version": 1}, 200)  # already there: nothing
    steps.do("PUT", label, {"version": 2}, 200, ("label.move", "label", "answer:production"))
    steps.do("POST", label + "/rollback", {"reason": "too short"}, 200,
             ("label.rollback", "label", "answer:production"))  # fmt: skip
    steps.do("POST", label + "/protect", {}, 200, ("label.protect", "label", "answer:production"))
    items = [{"id": "a", "vars": {"q": "hi"}, "expected": "hello"}]
    steps.do("POST", "/api/v1/evals/datasets", {"name": "golden", "items": items}, 201,
             ("dataset.push", "dataset", "golden@1"))  # fmt: skip
    steps.do("POST", "/api/v1/evals/datasets/golden/versions/1/lock", None, 200,
             ("dataset.lock", "dataset", "golden@1"))  # fmt: skip
    steps.do("POST", "/api/v1/evals/datasets/golden/versions/1/lock", None, 200)  # no change


def _releases(steps: _Steps) -> None:
    a = steps.do("POST", "/api/v1/releases", {"spec": RELEASE}, 201)["release_id"]
    steps.expected.append((f"req-{steps.count}", "release.create", "release", a))
    b_spec = {**RELEASE, "prompts": {"answer": 2}}
    b = steps.do("POST", "/api/v1/releases", {"spec": b_spec}, 201)["release_id"]
    steps.expected.append((f"req-{steps.count}", "release.create", "release", b))
    steps.do("POST", "/api/v1/releases", {"spec": RELEASE}, 200)  # exists: nothing
    route = "/api/v1/routes/help"
    steps.do(
        "POST", route + "/deploy", {"release": a}, 200, ("route.deploy", "route", "help@production")
    )
    for finish in ("promote", "abort", "rollback"):
        started = steps.do(
            "POST",
            route + "/rollout",
            {"candidate": b if finish == "promote" else a, **ROLLOUT},
            201,
        )
        rid = started["rollout_id"]
        steps.expected.append((f"req-{steps.count}", "rollout.start", "rollout", rid))
        if finish == "promote":
            steps.do("POST", route + "/pause", {}, 200, ("rollout.pause", "rollout", rid))
            steps.do("POST", route + "/resume", {}, 200, ("rollout.resume", "rollout", rid))
        steps.do(
            "POST",
            f"{route}/{finish}",
            {"reason": finish},
            200,
            (f"rollout.{finish}", "rollout", rid),
        )
    steps.do("POST", route + "/rollback", {}, 200, ("route.rollback", "route", "help@production"))


def _keys(steps: _Steps) -> str:
    created = steps.do("POST", "/api/v1/keys", {"name": "ci", "role": "write"}, 201)
    steps.expected.append((f"req-{steps.count}", "key.create", "api_key", str(created["id"])))
    steps.do("DELETE", f"/api/v1/keys/{created['id']}", None, 200,
             ("key.revoke", "api_key", str(created["id"])))  # fmt: skip
    steps.do("DELETE", f"/api/v1/keys/{created['id']}", None, 404)  # already revoked: nothing
    return str(created["secret"])


def test_every_change_through_the_api_is_recorded(
    audited_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    steps = _Steps(audited_server)
    _prompts_and_datasets(steps)
    _releases(steps)
    key_secret = _keys(steps)
    engine = audited_server.state.engine
    stored = rows(engine)
    assert [(r["request_id"], r["action"], r["object_type"], r["object_id"]) for r in stored] == (
        steps.expected
    )
    actor = _key_actor(audited_server)
    with engine.connect() as conn:
        project_id = ensure_project(conn)
        assert verify(conn, AuditChain(SECRET)).intact
    assert {(r["actor"], r["project_id"], r["hash_mode"]) for r in stored} == {
        (actor, project_id, HMAC_SHA256)
    }
    moves = [orjson.loads(r["details"]) for r in stored if r["action"].startswith("label.")]
    assert [(m["from_version"], m["to_version"]) for m in moves] == [
        (None, 1), (1, 2), (2, 1), (1, 1)
    ]  # fmt: skip
    assert next(r for r in stored if r["action"] == "label.rollback")["reason"] == "too short"
    # No secret, and no content (the template text), is kept in a record or in the log.
    dumped = repr(stored)
    for secret in (key_secret, key_secret[4:16], SECRET, "Answer briefly"):
        assert secret not in dumped
        assert secret not in caplog.text


def test_a_refused_change_records_nothing(live_server: LiveServer) -> None:
    with live_server.state.engine.begin() as conn:
        writer = create_key(conn, "default", name="writer", role=Role.WRITE).secret
    live_server.state.keys.reload()
    assert call(live_server, "POST", "/api/v1/prompts", {"prompts": [PROMPT]})[0] == 201
    label = "/api/v1/prompts/answer/labels/production"
    assert call(live_server, "PUT", label, {"version": 1})[0] == 200
    assert call(live_server, "POST", label + "/protect", {})[0] == 200
    before = len(rows(live_server.state.engine))
    status, body = call(live_server, "PUT", label, {"version": 1, "reason": "x"}, key=writer)
    assert status == 403, body  # protected: an admin key is needed
    assert call(live_server, "POST", label + "/rollback", {}, key=writer)[0] == 403
    assert call(live_server, "POST", "/api/v1/keys", {"name": "x"}, key=writer)[0] == 403
    assert call(live_server, "PUT", label, {"version": 9})[0] == 404  # no such version
    assert len(rows(live_server.state.engine)) == before


def test_a_change_whose_record_cannot_be_written_does_not_happen(engine: sa.Engine) -> None:
    """The record is in the change's transaction: when appending it fails (here: the chain is
    HMAC-keyed and this writer has no secret), the prompt version is not stored either."""
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    keyed = AuditTrail(AuditChain(SECRET), "key:1")
    blind = AuditTrail(AuditChain(), "key:1")
    spec = PromptSpec.from_dict(PROMPT)
    run_write(
        engine, lambda c: registry.push(c, project_id, [spec], message="", author="a", audit=keyed)
    )
    v2 = PromptSpec.from_dict({**PROMPT, "text": "changed {{ q }}"})
    with pytest.raises(AuditError):
        run_write(
            engine,
            lambda c: registry.push(c, project_id, [v2], message="", author="a", audit=blind),
        )
    with engine.connect() as conn:
        versions = conn.execute(sa.select(sa.func.count()).select_from(prompt_versions)).scalar()
        assert conn.execute(sa.select(audit_chain.c.last_seq)).scalar() == 1
    assert versions == 1
    assert [r["action"] for r in rows(engine)] == ["prompt.push"]


def test_a_change_rolled_back_after_its_record_leaves_neither(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    trail = AuditTrail(AuditChain(), "key:1")
    spec = PromptSpec.from_dict(PROMPT)
    run_write(
        engine, lambda c: registry.push(c, project_id, [spec], message="", author="a", audit=trail)
    )
    release = ReleaseSpec.from_dict(RELEASE)

    def create_then_fail(conn: sa.Connection) -> None:
        release_store.create_release(conn, project_id, release, actor="a", audit=trail)
        raise RuntimeError("a later step of the same change failed")

    with pytest.raises(RuntimeError, match="later step"):
        run_write(engine, create_then_fail)
    assert [r["action"] for r in rows(engine)] == ["prompt.push"]
    with engine.connect() as conn:
        assert release_store.list_releases(conn, project_id) == []
