"""``bastion eval run/compare/gate`` with release and route targets end to end: a real
simulator and a real gateway on loopback, releases deployed on a route in the gateway's store.

Production serves a release pinning the prompt version that makes the simulator answer the
expected output; staging serves one pinning the version that lost the directive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.evals import store
from bastion.prompts import PromptSpec, registry
from bastion.releases import store as releases
from bastion.releases.model import ReleaseSpec
from bastion.store.transactions import run_write
from tests.evals.conftest import Stack, cli, gateway_stack, point_cli_at
from tests.evals.test_runner import (
    BROKEN,
    CONFIG,
    EQUALS,
    GOOD,
    N_ITEMS,
    run_id_of,
    write_dataset,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(tmp_path_factory.mktemp("release-evals-home"), CONFIG, seed=5) as stack:
        yield stack


@pytest.fixture
def cli_env(env: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    return point_cli_at(env, monkeypatch)


@pytest.fixture(scope="module")
def deployed(env: Stack) -> dict[str, Any]:
    """Prompt ``qa`` v1 (good) and v2 (broken); releases pinning each, plus one pinning two
    prompts and one pinning none; route ``checkout`` serving good in production and broken in
    staging."""

    def push(spec: dict[str, Any]) -> int:
        pushed = run_write(
            env.engine,
            lambda conn: registry.push(
                conn, env.project_id, [PromptSpec.from_dict(spec)], message="t", author="t"
            ),
        )
        return int(pushed[0].version)

    good, broken = push(GOOD), push(BROKEN)
    push({**GOOD, "name": "other"})

    def release(data: dict[str, Any]) -> str:
        spec = ReleaseSpec.from_dict(data)
        info, _ = run_write(
            env.engine,
            lambda conn: releases.create_release(conn, env.project_id, spec, actor="t"),
        )
        return info.release_id

    ids = {
        "good": release({"name": "qa-good", "prompts": {"qa": good}, "model": "sim-small",
                         "params": {"temperature": 0}}),
        "broken": release({"name": "qa-broken", "prompts": {"qa": broken}, "model": "sim-small"}),
        "both": release({"name": "both", "prompts": {"qa": good, "other": 1},
                         "model": "sim-small"}),
        "bare": release({"name": "bare", "model": "sim-small"}),
    }  # fmt: skip
    for environment, which in (("production", "good"), ("staging", "broken")):
        run_write(
            env.engine,
            lambda conn, e=environment, w=which: releases.deploy(
                conn, env.project_id, "checkout", e, ids[w], actor="t"
            ),
        )
    return {**ids, "good_version": good}


def run(*args: str) -> Any:
    return cli("run", "--scorer", EQUALS, *args)


def test_routes_and_releases_are_run_compared_and_gated_by_environment(
    cli_env: Stack, deployed: dict[str, Any], tmp_path: Path
) -> None:
    env = cli_env
    pushed = cli("dataset", "push", "golden", str(write_dataset(tmp_path / "g.jsonl")))
    assert pushed.exit_code == 0, pushed.output

    before = env.sim_requests()
    production = run_id_of(run("--dataset", "golden", "--target", "route:checkout@production"))
    staging = run_id_of(run("--dataset", "golden", "--target", f"release:{deployed['broken']}"))
    assert env.sim_requests() - before == 2 * N_ITEMS
    with env.engine.connect() as conn:
        prod_run = store.get_run(conn, env.project_id, production)
        stage_run = store.get_run(conn, env.project_id, staging)
    assert prod_run.target_key == f"release:{deployed['good']}"
    assert prod_run.target["release_id"] == deployed["good"]
    assert (prod_run.target["route"], prod_run.target["environment"]) == ("checkout", "production")
    assert (prod_run.prompt_name, prod_run.prompt_version) == ("qa", deployed["good_version"])
    assert prod_run.params["temperature"] == 0  # the release's params were sent
    assert prod_run.summary is not None
    assert stage_run.summary is not None
    assert prod_run.summary["metrics"]["equals"]["mean"] == 1.0
    assert stage_run.summary["metrics"]["equals"]["mean"] == 0.0

    report = tmp_path / "gate.json"
    gate = cli(
        "gate", "--route", "checkout", "--dataset", "golden",
        "--baseline", "production", "--candidate", "staging", "-o", str(report),
    )  # fmt: skip
    assert gate.exit_code == 1, gate.output
    assert production in report.read_text()
    assert staging in report.read_text()
    same = cli(
        "gate", "--route", "checkout", "-d", "golden", "-b", "production",
        "-C", f"release:{deployed['good'][:8]}",
    )  # fmt: skip
    assert same.exit_code == 0, same.output
    compared = cli("compare", "--route", "checkout", "-d", "golden", "production", "staging")
    assert compared.exit_code == 0, compared.output
    assert "equals" in compared.output


def test_releases_with_several_or_no_prompts(
    cli_env: Stack, deployed: dict[str, Any], tmp_path: Path
) -> None:
    env = cli_env
    cli("dataset", "push", "golden", str(write_dataset(tmp_path / "g.jsonl")))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"id": "a", "input": "Reply with: yes", "expected": "yes"}\n')
    cli("dataset", "push", "inputs", str(inputs))
    before = env.sim_requests()
    both = f"release:{deployed['both']}"
    several = run("--dataset", "golden", "--target", both)
    assert several.exit_code == 2
    assert "pins several prompts (other, qa)" in " ".join(several.output.split())
    assert env.sim_requests() == before
    chosen = run_id_of(run("--dataset", "golden", "--target", both, "--prompt", "qa"))
    bare = run_id_of(run("--dataset", "inputs", "--target", f"release:{deployed['bare']}"))
    with env.engine.connect() as conn:
        assert store.get_run(conn, env.project_id, chosen).target_key == f"{both}/qa"
        summary = store.get_run(conn, env.project_id, bare).summary
    assert summary is not None
    assert summary["metrics"]["equals"]["mean"] == 1.0
    gate = cli("gate", "-d", "golden", "--prompt", "qa", "-b", both, "-C", both)
    assert gate.exit_code == 0, gate.output


def test_bad_release_references_fail_before_any_call(
    cli_env: Stack, deployed: dict[str, Any], tmp_path: Path
) -> None:
    env = cli_env
    cli("dataset", "push", "golden", str(write_dataset(tmp_path / "g.jsonl")))
    before = env.sim_requests()
    runs = [
        (["--target", "release:nope"], "no release 'nope'"),
        (["--target", "route:nowhere@production"], "no release is deployed on route 'nowhere'"),
        (["--target", "route:checkout@qa"], "environment must be one of staging, production"),
        (["--target", f"release:{deployed['good']}", "--prompt", "other"],
         "does not pin a prompt 'other' (it pins: qa)"),
        (["--target", f"release:{deployed['good']}", "--model", "sim-slow"],
         "the release decides the model"),
    ]  # fmt: skip
    for args, message in runs:
        result = run("--dataset", "golden", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    gates = [
        (["-b", "production", "-C", "staging"], "--route NAME (meaning route:NAME@ENV)"),
        (["--route", "nowhere", "-b", "production", "-C", "staging"],
         "no release is deployed on route 'nowhere' in production"),
        (["--route", "checkout", "-b", "production", "-C", "prod"],
         "environment must be one of staging, production"),
        (["-b", "release:nope", "-C", "release:nope"], "no release 'nope'"),
        (["-b", f"release:{deployed['both']}", "-C", "release:nope"], "pins several prompts"),
    ]  # fmt: skip
    for args, message in gates:
        result = cli("gate", "--dataset", "golden", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert env.sim_requests() == before
