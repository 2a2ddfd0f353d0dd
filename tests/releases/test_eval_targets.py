"""Release and route targets of the eval runner, resolved by the release store and planned on
SQLite and PostgreSQL: what a release bundle resolves to, how route references are pinned to a
release id, how compare and gate references find runs, and the errors raised before any model
call."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.evals import runner, store
from bastion.evals.datasets import Item
from bastion.evals.references import latest_run_of, parse_reference, stored_key
from bastion.prompts import PromptSpec
from bastion.prompts import registry as prompt_registry
from bastion.releases import store as releases
from bastion.releases.eval_targets import resolve_release
from bastion.releases.model import ReleaseSpec
from bastion.store.transactions import run_write

EQUALS = [{"type": "equals", "value": "{{ expected }}"}]
TOOL = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}


def _push(engine: sa.Engine, project_id: int, spec: dict[str, Any]) -> int:
    pushed = run_write(
        engine,
        lambda conn: prompt_registry.push(
            conn, project_id, [PromptSpec.from_dict(spec)], message="m", author="t"
        ),
    )
    return int(pushed[0].version)


def _release(engine: sa.Engine, project_id: int, data: dict[str, Any]) -> str:
    spec = ReleaseSpec.from_dict(data)
    info, _ = run_write(
        engine, lambda conn: releases.create_release(conn, project_id, spec, actor="t")
    )
    return info.release_id


def _deploy(engine: sa.Engine, project_id: int, route: str, env: str, release_id: str) -> None:
    run_write(
        engine,
        lambda conn: releases.deploy(conn, project_id, route, env, release_id, actor="t"),
    )


def _prompt(name: str, text: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": "prompt-model",
        "params": {"temperature": 0.9, "max_tokens": 50},
        "variables": {"order": {"type": "string"}},
        "messages": [{"role": "user", "content": text}],
    }


@pytest.fixture
def project(engine: sa.Engine) -> dict[str, Any]:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    v1 = _push(engine, project_id, _prompt("checkout", "Order {{ order }}, v1"))
    v2 = _push(engine, project_id, _prompt("checkout", "Order {{ order }}, v2"))
    _push(engine, project_id, _prompt("refunds", "Refund {{ order }}"))
    items = [Item(id=f"i{k}", vars={"order": f"#{k}", "input": f"say {k}"}) for k in range(3)]
    store.push_dataset(engine, project_id, "golden", items)
    one = _release(
        engine,
        project_id,
        {
            "name": "checkout",
            "prompts": {"checkout": v1},
            "model": "release-model",
            "fallbacks": ["backup"],
            "params": {"temperature": 0.1},
            "tools": [TOOL],
        },
    )
    two = _release(engine, project_id, {"name": "checkout", "prompts": {"checkout": v2},
                                        "model": "release-model"})  # fmt: skip
    both = _release(engine, project_id, {"name": "bundle", "model": "release-model",
                                         "prompts": {"checkout": v1, "refunds": 1}})  # fmt: skip
    bare = _release(engine, project_id, {"name": "bare", "model": "plain-model",
                                         "params": {"seed": 7}})  # fmt: skip
    _deploy(engine, project_id, "checkout", "production", one)
    _deploy(engine, project_id, "checkout", "staging", two)
    return {"id": project_id, "v1": v1, "v2": v2, "one": one, "two": two, "both": both,
            "bare": bare}  # fmt: skip


def _plan(engine: sa.Engine, project_id: int, target: str, **kw: Any) -> runner.EvalPlan:
    prompt = kw.pop("prompt", None)
    return runner.plan_run(
        engine,
        project_id,
        dataset="golden",
        target=runner.parse_target(target, prompt=prompt),
        scorers=EQUALS,
        releases=resolve_release,
        **kw,
    )


def test_a_release_target_evaluates_its_bundle(engine: sa.Engine, project: dict[str, Any]) -> None:
    pid, one = project["id"], project["one"]
    plan = _plan(engine, pid, f"release:{one}")
    resolved = plan.resolved
    assert plan.target_key == f"release:{one}"
    assert resolved.model == "release-model"  # the release's model, not the prompt's
    # The release's params override the prompt's defaults; its tools are passed along.
    assert resolved.params == {"temperature": 0.1, "max_tokens": 50, "tools": [TOOL]}
    assert plan.messages["i1"] == [{"role": "user", "content": "Order #1, v1"}]
    assert resolved.description["release_id"] == one
    assert resolved.description["prompt"] == "checkout"
    assert resolved.description["version"] == project["v1"]
    assert resolved.description["fallbacks"] == ["backup"]
    # By name: the newest release called "checkout"; explicit params still win.
    by_name = _plan(engine, pid, "release:checkout", params={"temperature": 0.5})
    assert by_name.resolved.description["release_id"] == project["two"]
    assert by_name.resolved.params["temperature"] == 0.5
    assert by_name.messages["i1"][0]["content"] == "Order #1, v2"
    # The same prompt version and model as a plain prompt target share the output cache.
    same = runner.plan_run(
        engine, pid, dataset="golden", scorers=EQUALS, model="release-model",
        target=runner.Target("prompt", "checkout", version=project["v1"]),
    )  # fmt: skip
    assert same.resolved.target_hash == resolved.target_hash


def test_release_without_prompts_calls_its_model_on_the_input(
    engine: sa.Engine, project: dict[str, Any]
) -> None:
    plan = _plan(engine, project["id"], f"release:{project['bare']}")
    assert plan.resolved.spec is None
    assert plan.resolved.model == "plain-model"
    assert plan.resolved.params == {"seed": 7}
    assert plan.messages["i2"] == [{"role": "user", "content": "say 2"}]
    assert plan.resolved.description["prompt"] is None


def test_a_release_pinning_several_prompts_needs_one_chosen(
    engine: sa.Engine, project: dict[str, Any]
) -> None:
    pid, both = project["id"], project["both"]
    with pytest.raises(runner.EvalSetupError, match=r"pins several prompts \(checkout, refunds\)"):
        _plan(engine, pid, f"release:{both}")
    plan = _plan(engine, pid, f"release:{both}", prompt="refunds")
    assert plan.target_key == f"release:{both}/refunds"
    assert plan.messages["i0"][0]["content"] == "Refund #0"
    with pytest.raises(runner.EvalSetupError, match=r"does not pin a prompt 'nope'.*checkout"):
        _plan(engine, pid, f"release:{both}", prompt="nope")
    with pytest.raises(runner.EvalSetupError, match=r"pins: none"):
        _plan(engine, pid, f"release:{project['bare']}", prompt="checkout")


def test_a_route_target_is_pinned_to_the_release_it_serves(
    engine: sa.Engine, project: dict[str, Any]
) -> None:
    pid, one, two = project["id"], project["one"], project["two"]
    plan = _plan(engine, pid, "route:checkout@production")
    assert plan.target_key == f"release:{one}"
    assert plan.resolved.description["route"] == "checkout"
    assert plan.resolved.description["environment"] == "production"
    assert _plan(engine, pid, "route:checkout@staging").target_key == f"release:{two}"

    run_id = store.create_run(
        engine, pid, target_key=plan.target_key, target=plan.resolved.description,
        target_hash=plan.resolved.target_hash, dataset=plan.dataset.info,
        scorers=plan.scorer_specs, params=plan.resolved.params, repeats=1,
    )  # fmt: skip
    with engine.connect() as conn:
        info = store.get_run(conn, pid, run_id)
    assert (info.prompt_name, info.prompt_version) == ("checkout", project["v1"])
    assert info.label.startswith("route:checkout@production = release checkout")
    # Production moves on; resuming the run evaluates what it started with.
    _deploy(engine, pid, "checkout", "production", two)
    assert _plan(engine, pid, "route:checkout@production").target_key == f"release:{two}"
    resumed = runner.plan_resume(engine, pid, run_id, releases=resolve_release)
    assert resumed.resolved.description["release_id"] == one
    assert resumed.messages["i0"][0]["content"] == "Order #0, v1"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("release:nope", "no release 'nope'"),
        ("release:", "release: needs a release id or name"),
        ("route:nowhere@production", "no release is deployed on route 'nowhere' in production"),
        ("route:checkout@qa", "environment must be one of staging, production"),
        ("route:checkout", "use route:NAME@ENV"),
        ("model:", "needs a gateway model alias"),
    ],
)
def test_bad_release_and_route_targets_fail_at_plan_time(
    engine: sa.Engine, project: dict[str, Any], target: str, message: str
) -> None:
    with pytest.raises(runner.EvalSetupError, match=message):
        _plan(engine, project["id"], target)


def test_a_planner_without_the_release_store_says_so(
    engine: sa.Engine, project: dict[str, Any]
) -> None:
    # Evals sits below releases: release and route targets resolve only through the resolver
    # the caller hands in, and without one the plan fails before any model call.
    target = runner.parse_target(f"release:{project['one']}")
    with pytest.raises(runner.EvalSetupError, match="need the release store"):
        runner.plan_run(engine, project["id"], dataset="golden", target=target, scorers=EQUALS)
    with engine.connect() as conn, pytest.raises(runner.EvalSetupError, match="release store"):
        latest_run_of(conn, project["id"], "golden", target)


def test_the_release_decides_the_model(engine: sa.Engine, project: dict[str, Any]) -> None:
    from bastion.evals.redteam.run import prepare

    with pytest.raises(runner.EvalSetupError, match="the release decides the model"):
        _plan(engine, project["id"], f"release:{project['one']}", model="other")
    with pytest.raises(runner.EvalSetupError, match="red-team runs target a prompt or a model"):
        prepare(
            engine, project["id"], suites=["injection"], target=runner.parse_target("release:x")
        )
    with pytest.raises(runner.EvalSetupError, match="applies to release: and route:"):
        runner.parse_target("checkout@production", prompt="checkout")


def test_references_find_runs_by_the_release_a_route_serves_now(
    engine: sa.Engine, project: dict[str, Any]
) -> None:
    pid, one, two = project["id"], project["one"], project["two"]

    def completed_run(target: str) -> str:
        plan = _plan(engine, pid, target)
        run_id = store.create_run(
            engine, pid, target_key=plan.target_key, target=plan.resolved.description,
            target_hash=plan.resolved.target_hash, dataset=plan.dataset.info,
            scorers=plan.scorer_specs, params=plan.resolved.params, repeats=1,
        )  # fmt: skip
        store.finish_run(engine, pid, run_id, "completed", {})
        return run_id

    by_route = completed_run("route:checkout@production")
    by_release = completed_run(f"release:{two}")
    with engine.connect() as conn:

        def latest(ref: str, **kw: str) -> str:
            target = parse_reference(ref, **kw)
            return latest_run_of(conn, pid, "golden", target, resolve_release).run_id

        assert latest("production", route="checkout") == by_route
        assert latest(f"release:{one[:8]}") == by_route  # an id prefix finds it too
        assert latest("staging", route="checkout") == by_release  # run as release:, found
        assert latest("route:checkout@staging") == by_release
        checkout_v2 = parse_reference("v2", prompt="checkout")
        assert stored_key(conn, pid, checkout_v2, resolve_release) == "checkout@v2"
        with pytest.raises(store.EvalStoreError, match="no completed eval run of release:"):
            latest(f"release:{project['bare']}")

    _deploy(engine, pid, "checkout", "production", project["both"])
    production = parse_reference("production", route="checkout")
    with engine.connect() as conn, pytest.raises(runner.EvalSetupError, match="pins several"):
        latest_run_of(conn, pid, "golden", production, resolve_release)
    with engine.connect() as conn:
        target = parse_reference("production", route="checkout", prompt="refunds")
        with pytest.raises(store.EvalStoreError, match=r"serves release:.*--prompt refunds"):
            latest_run_of(conn, pid, "golden", target, resolve_release)


def test_bare_words_need_prompt_or_route() -> None:
    assert parse_reference("candidate", prompt="qa") == runner.Target(
        "prompt", "qa", label="candidate"
    )
    assert parse_reference("staging", route="checkout") == runner.Target(
        "route", "checkout", environment="staging"
    )
    # With both options an environment is the route's, any other word the prompt's label.
    assert parse_reference("production", prompt="qa", route="r").kind == "route"
    assert parse_reference("candidate", prompt="qa", route="r").key == "qa@candidate"
    assert parse_reference("qa@production", route="r").key == "qa@production"
    assert parse_reference("model:small").key == "model:small"
    with pytest.raises(runner.EvalSetupError, match=r"\(1\) a run id.*--route NAME"):
        parse_reference("production")
