"""Releases, routes, rollouts and history in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.prompts import PromptSpec
from bastion.prompts import registry as prompt_registry
from bastion.releases import rollouts, store
from bastion.releases.diff import diff_releases
from bastion.releases.model import ReleaseSpec, ReleaseSpecError, make_policy
from bastion.store.transactions import run_write

RELEASE_V1 = """
name: checkout
description: first
prompts: {checkout: 1}
model: chat
fallbacks: [claude]
params: {temperature: 0.2, max_tokens: 100}
tools:
  - {type: function, function: {name: lookup_order, parameters: {type: object}}}
guard: {pii: redact}
"""


def _project(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return ensure_project(conn)


def _push(engine: sa.Engine, project_id: int, text: str) -> None:
    spec = PromptSpec.from_dict({"name": "checkout", "text": text, "variables": {"order": {}}})
    run_write(
        engine,
        lambda conn: prompt_registry.push(conn, project_id, [spec], message="m", author="t"),
    )


def _create(engine: sa.Engine, project_id: int, text: str) -> store.ReleaseInfo:
    spec = ReleaseSpec.from_yaml(text)
    info, _created = run_write(
        engine, lambda conn: store.create_release(conn, project_id, spec, actor="tester")
    )
    return info


@pytest.fixture
def project(engine: sa.Engine) -> int:
    project_id = _project(engine)
    _push(engine, project_id, "Help with order {{ order }}.")
    _push(engine, project_id, "Help, briefly, with order {{ order }}.")
    return project_id


def test_release_is_content_addressed_and_immutable(engine: sa.Engine, project: int) -> None:
    first = _create(engine, project, RELEASE_V1)
    spec = ReleaseSpec.from_yaml(RELEASE_V1)
    again, created = run_write(
        engine, lambda conn: store.create_release(conn, project, spec, actor="someone else")
    )
    assert not created
    assert again.release_id == first.release_id
    assert first.release_id == spec.content_hash().removeprefix("sha256:")[:16]
    assert again.created_by == "tester"  # the stored release is unchanged
    second = _create(engine, project, RELEASE_V1.replace("checkout: 1", "checkout: 2"))
    assert second.release_id != first.release_id
    with engine.connect() as conn:
        assert store.get_release(conn, project, first.release_id[:6]).release_id == first.release_id
        # by name: the newest release with that name
        assert store.get_release(conn, project, "checkout").release_id in {
            first.release_id,
            second.release_id,
        }
        assert {r.release_id for r in store.list_releases(conn, project)} == {
            first.release_id,
            second.release_id,
        }
        with pytest.raises(store.NotFoundError, match="no release 'nope'"):
            store.get_release(conn, project, "nope")


def test_release_must_pin_existing_prompt_versions(engine: sa.Engine, project: int) -> None:
    with pytest.raises(store.NotFoundError, match="no version 9 of prompt 'checkout'"):
        _create(engine, project, RELEASE_V1.replace("checkout: 1", "checkout: 9"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: chat", "name must be"),
        ("name: x", "model must be"),
        ("name: x\nmodel: chat\nsurprise: 1", "unknown key 'surprise'"),
        ("name: x\nmodel: chat\nprompts: {p: 0}", "prompts.p must be a version number"),
        ("name: x\nmodel: chat\nparams: {model: other}", "params.model"),
        ("name: x\nmodel: chat\ntools: {a: 1}", "tools must be a list"),
        ("name: '../etc'\nmodel: chat", "name must be"),
        ("[1, 2", "invalid YAML"),
    ],
)
def test_bad_release_files_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ReleaseSpecError, match=message):
        ReleaseSpec.from_yaml(text, "release.yaml")


def test_bad_rollout_options_are_refused() -> None:
    with pytest.raises(ReleaseSpecError, match="steps must increase"):
        make_policy(strategy="canary", steps="50,25")
    with pytest.raises(ReleaseSpecError, match="strategy must be one of"):
        make_policy(strategy="big-bang")
    with pytest.raises(ReleaseSpecError, match="duration"):
        make_policy(strategy="canary", bake="soon")
    with pytest.raises(ReleaseSpecError, match="unknown threshold"):
        make_policy(strategy="canary", thresholds={"vibes": 1})
    assert make_policy(strategy="canary", steps="5,50").steps == (5.0, 50.0, 100.0)
    assert make_policy(strategy="canary", bake="500ms").bake_s == 0.5


def test_diff_shows_prompt_and_config_changes(engine: sa.Engine, project: int) -> None:
    a = _create(engine, project, RELEASE_V1)
    b = _create(
        engine,
        project,
        RELEASE_V1.replace("checkout: 1", "checkout: 2").replace(
            "temperature: 0.2", "temperature: 0.7"
        ),
    )
    with engine.connect() as conn:
        diff = diff_releases(conn, project, a.release_id, b.release_id)
        same = diff_releases(conn, project, a.release_id, a.release_id)
    assert same.empty
    assert [(c.key, c.a, c.b) for c in diff.config] == [("params.temperature", "0.2", "0.7")]
    (prompt,) = diff.prompts
    assert (prompt.version_a, prompt.version_b) == (1, 2)
    assert "briefly" in prompt.template_b
    assert "briefly" not in prompt.template_a
    assert "+Help, briefly" in prompt.unified


def _deploy(engine: sa.Engine, project: int, release: str, reason: str = "r") -> None:
    run_write(
        engine,
        lambda conn: store.deploy(
            conn, project, "checkout-assistant", "production", release, actor="t", reason=reason
        ),
    )


def test_rollout_lifecycle_is_audited_in_the_history(engine: sa.Engine, project: int) -> None:
    a = _create(engine, project, RELEASE_V1)
    b = _create(engine, project, RELEASE_V1.replace("checkout: 1", "checkout: 2"))
    policy = make_policy(strategy="canary", steps="5,25,50", bake=1)
    route, env = "checkout-assistant", "production"

    def start(conn: sa.Connection) -> rollouts.Rollout:
        return rollouts.start_rollout(conn, project, route, env, b.release_id, policy, actor="t")

    with pytest.raises(store.ConflictError, match="no stable release"):
        run_write(engine, start)
    _deploy(engine, project, a.release_id, "first deploy")
    rollout = run_write(engine, start)
    assert (rollout.state, rollout.weight, rollout.step) == ("running", 5.0, 0)
    with pytest.raises(store.ConflictError, match="already has rollout"):
        run_write(engine, start)
    with pytest.raises(store.ConflictError, match="rollout in progress"):
        _deploy(engine, project, b.release_id)

    analysis: dict[str, Any] = {"outcome": "pass"}
    moved = run_write(
        engine, lambda conn: rollouts.advance(conn, project, rollout.rollout_id, 0, analysis)
    )
    assert moved is not None
    assert (moved.step, moved.weight) == (1, 25.0)
    # a decision for a step the rollout has left does nothing (a raced replica or a person)
    stale = run_write(
        engine, lambda conn: rollouts.advance(conn, project, rollout.rollout_id, 0, analysis)
    )
    assert stale is None
    paused = run_write(engine, lambda conn: rollouts.pause(conn, project, route, env, actor="op"))
    assert paused.state == "paused"
    run_write(engine, lambda conn: rollouts.resume(conn, project, route, env, actor="op"))
    failed = run_write(
        engine,
        lambda conn: rollouts.fail(conn, project, rollout.rollout_id, 1, analysis, "errors up"),
    )
    assert failed is not None
    assert failed.state == "rolled_back"
    assert failed.weight == 0
    with engine.connect() as conn:
        events = store.history(conn, project, route, env)
        route_now = store.lock_route(conn, project, route, env)
    assert [e.action for e in events] == ["deploy", "start", "step", "pause", "resume", "rollback"]
    assert events[-1].reason == "errors up"
    assert events[-1].stable_release_id == a.release_id
    assert route_now is not None
    assert route_now.release_id == a.release_id

    # a promotion makes the candidate stable; a later rollback returns to the one before
    run_write(engine, start)
    promoted = run_write(
        engine, lambda conn: rollouts.promote(conn, project, route, env, actor="op")
    )
    assert promoted.state == "promoted"
    back = run_write(engine, lambda conn: rollouts.rollback(conn, project, route, env, actor="op"))
    assert back == a.release_id
    with engine.connect() as conn:
        events = store.history(conn, project, route, env)
        # what was serving at each event's time, and before anything was deployed
        for event in events:
            at = store.serving_at(conn, project, route, env, event.at)
            assert at is not None
            assert at.at == event.at
        first = events[0]
        assert store.serving_at(conn, project, route, env, first.at - timedelta(seconds=1)) is None
        step_event = next(e for e in events if e.action == "step")
        during = store.serving_at(conn, project, route, env, step_event.at)
    assert during is not None
    assert (during.candidate_release_id, during.weight) == (b.release_id, 25.0)
    assert events[-1].action == "rollback"
    assert events[-1].stable_release_id == a.release_id


def test_only_one_replica_holds_a_rollout_lease(engine: sa.Engine, project: int) -> None:
    a = _create(engine, project, RELEASE_V1)
    b = _create(engine, project, RELEASE_V1.replace("checkout: 1", "checkout: 2"))
    _deploy(engine, project, a.release_id)
    policy = make_policy(strategy="canary")
    rollout = run_write(
        engine,
        lambda conn: rollouts.start_rollout(
            conn, project, "checkout-assistant", "production", b.release_id, policy, actor="t"
        ),
    )
    winners: list[str] = []
    lock = threading.Lock()

    def claim(owner: str) -> None:
        if run_write(
            engine, lambda conn: rollouts.claim_lease(conn, project, rollout.rollout_id, owner, 30)
        ):
            with lock:
                winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"replica-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    # the holder renews; an expired lease passes to another replica
    assert run_write(
        engine, lambda conn: rollouts.claim_lease(conn, project, rollout.rollout_id, winners[0], 0)
    )
    assert run_write(
        engine, lambda conn: rollouts.claim_lease(conn, project, rollout.rollout_id, "other", 30)
    )


def test_routes_and_environments_are_checked(engine: sa.Engine, project: int) -> None:
    a = _create(engine, project, RELEASE_V1)
    for route, env, message in [
        ("checkout", "qa", "environment must be one of staging, production"),
        ("../etc", "production", "route must be"),
        ("", "production", "route must be"),
    ]:
        with pytest.raises(store.ReleaseError, match=message):
            run_write(
                engine,
                lambda conn, r=route, e=env: store.deploy(
                    conn, project, r, e, a.release_id, actor="t"
                ),
            )
    # staging and production of one route are separate
    run_write(
        engine, lambda conn: store.deploy(conn, project, "x", "staging", a.release_id, actor="t")
    )
    with engine.connect() as conn:
        assert store.lock_route(conn, project, "x", "production") is None
        staged = store.lock_route(conn, project, "x", "staging")
    assert staged is not None
    assert staged.release_id == a.release_id


def test_concurrent_decisions_end_a_rollout_exactly_once(engine: sa.Engine, project: int) -> None:
    a = _create(engine, project, RELEASE_V1)
    b = _create(engine, project, RELEASE_V1.replace("checkout: 1", "checkout: 2"))
    _deploy(engine, project, a.release_id)
    route, env = "checkout-assistant", "production"
    rollout = run_write(
        engine,
        lambda conn: rollouts.start_rollout(
            conn, project, route, env, b.release_id, make_policy(strategy="canary"), actor="t"
        ),
    )
    outcomes: list[str] = []
    lock = threading.Lock()

    def decide(i: int) -> None:
        def work(conn: sa.Connection) -> object:
            if i % 3 == 0:
                return rollouts.promote(conn, project, route, env, actor=f"op{i}")
            if i % 3 == 1:
                return rollouts.abort(conn, project, route, env, actor=f"op{i}")
            return rollouts.fail(conn, project, rollout.rollout_id, 0, {}, f"analysis {i}")

        try:
            done = run_write(engine, work)
            result = "none" if done is None else "done"
        except store.ConflictError:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("done") == 1, outcomes
    with engine.connect() as conn:
        events = store.history(conn, project, route, env)
        final = rollouts.get_rollout(conn, project, rollout.rollout_id)
        serving = store.lock_route(conn, project, route, env)
    terminal = [e for e in events if e.action in ("promote", "abort", "rollback")]
    assert len(terminal) == 1
    assert final.state in ("promoted", "aborted", "rolled_back")
    assert serving is not None
    expected = b.release_id if final.state == "promoted" else a.release_id
    assert serving.release_id == expected
