"""The eval runner and ``bastion eval`` end to end: a real simulator and a real gateway on
loopback, the store in the gateway's SQLite file.

Prompts embed ``Reply with: {{ answer }}``, so the simulator answers exactly the expected
output and a baseline scores 1.0; a candidate whose template lost the directive scores 0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import Result

from bastion.evals import runner, store
from bastion.evals.datasets import Item
from bastion.prompts import PromptSpec, registry
from bastion.store.schema import eval_results
from tests.evals.conftest import Stack, cli, gateway_stack, point_cli_at

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
models:
  sim-small: {{deployments: [{{provider: sim, model: sim-small}}]}}
  sim-slow: {{deployments: [{{provider: sim, model: "sim-small~latency_ms=40"}}]}}
  broken: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=500"}}]}}
evals:
  gate:
    margins: {{"*": 0.05}}
"""

GOOD = {
    "name": "qa",
    "model": "sim-small",
    "variables": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "messages": [{"role": "user", "content": "{{ question }}\nReply with: {{ answer }}"}],
}
BROKEN = {**GOOD, "messages": [{"role": "user", "content": "{{ question }}\nAnswer: {{ answer }}"}]}
EQUALS = '{"type": "equals", "value": "{{ expected }}"}'
N_ITEMS = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(tmp_path_factory.mktemp("evals-home"), CONFIG, seed=3) as stack:
        yield stack


@pytest.fixture
def cli_env(env: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    return point_cli_at(env, monkeypatch)


def push_prompt(env: Stack, spec: dict[str, object], label: str) -> int:
    def work(conn: sa.Connection) -> int:
        pushed = registry.push(
            conn, env.project_id, [PromptSpec.from_dict(spec)], message="t", author="test"
        )
        version = pushed[0].version
        registry.set_label(conn, env.project_id, "qa", version, label, actor="test", role="admin")
        return version

    return registry.run_write(env.engine, work)


def write_dataset(path: Path, n: int = N_ITEMS, *, answer: bool = True) -> Path:
    rows = []
    for k in range(n):
        row: dict[str, object] = {"id": f"q{k:02d}", "question": f"What is item {k}?"}
        if answer:
            row["answer"] = f"answer {k}"
        row["expected"] = f"answer {k}"
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def run_id_of(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def test_gate_blocks_a_broken_candidate_and_passes_an_identical_one(
    cli_env: Stack, tmp_path: Path
) -> None:
    env = cli_env
    push_prompt(env, GOOD, "production")
    push_prompt(env, BROKEN, "candidate")
    pushed = cli("dataset", "push", "golden", str(write_dataset(tmp_path / "g.jsonl")), "--lock")
    assert pushed.exit_code == 0, pushed.output
    assert "golden@1: created (12 items, locked" in pushed.output
    assert "golden" in cli("dataset", "list").output

    before = env.sim_requests()
    baseline = run_id_of(
        cli("run", "--dataset", "golden", "--prompt", "qa@production", "--scorer", EQUALS)
    )
    candidate = run_id_of(
        cli("run", "-d", "golden@1", "--prompt", "qa@candidate", "--scorer", EQUALS,
            "--concurrency", "4")
    )  # fmt: skip
    assert env.sim_requests() - before == 2 * N_ITEMS
    with env.engine.connect() as conn:
        base_run = store.get_run(conn, env.project_id, baseline)
        assert base_run.status == "completed"
        assert base_run.summary is not None
        assert base_run.summary["metrics"]["equals"]["mean"] == 1.0
        assert store.get_run(conn, env.project_id, candidate).summary["metrics"]["equals"][
            "mean"
        ] == 0.0  # fmt: skip
        traces = conn.execute(
            sa.text("SELECT trace_id FROM eval_results WHERE run_id = :r"), {"r": baseline}
        ).scalars()
        assert all(t and len(t) == 32 for t in traces)

    report = tmp_path / "gate.md"
    gate = cli(
        "gate", "--baseline", "qa@production", "--candidate", "qa@candidate",
        "--dataset", "golden", "-o", str(report),
    )  # fmt: skip
    assert gate.exit_code == 1, gate.output
    text = report.read_text()
    assert "q00" in text
    assert "answer 0" in text

    # The same candidate again: answered from the output cache, no model call.
    before = env.sim_requests()
    again = cli("run", "--dataset", "golden", "--prompt", "qa@candidate", "--scorer", EQUALS)
    rerun = run_id_of(again)
    assert "12 cached" in again.output
    assert env.sim_requests() == before
    same = cli("gate", "--baseline", candidate, "--candidate", rerun)
    assert same.exit_code == 0, same.output
    compared = cli("compare", candidate, rerun)
    assert compared.exit_code == 0
    assert "equals" in compared.output


def test_bad_input_fails_before_any_call(cli_env: Stack, tmp_path: Path) -> None:
    env = cli_env
    push_prompt(env, GOOD, "production")
    cli("dataset", "push", "no-answer", str(write_dataset(tmp_path / "n.jsonl", answer=False)))
    cli("dataset", "push", "golden", str(write_dataset(tmp_path / "g.jsonl")))
    before = env.sim_requests()
    cases = [
        (["--dataset", "golden", "--prompt", "qa@production", "--scorer", '{"type": "nope"}'],
         "unknown scorer type 'nope'"),
        (["--dataset", "no-answer", "--prompt", "qa@production", "--scorer", EQUALS],
         "lack template variables"),
        (["--dataset", "golden", "--prompt", "missing@production", "--scorer", EQUALS],
         "missing"),
        (["--dataset", "golden", "--prompt", "qa@staging", "--scorer", EQUALS], "no label"),
        (["--dataset", "golden", "--model", "sim-small", "--scorer", EQUALS],
         "neither an 'input' string nor a 'messages' list"),
        (["--dataset", "nope", "--prompt", "qa", "--scorer", EQUALS], "no dataset 'nope'"),
        (["--dataset", "golden", "--prompt", "qa"], "no scorers"),
    ]  # fmt: skip
    for args, message in cases:
        result = cli("run", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert env.sim_requests() == before
    gate = cli("gate", "--baseline", "qa@production", "--candidate", "qa@nothing")
    assert gate.exit_code == 2
    assert "--dataset" in gate.output


def model_items(n: int) -> list[Item]:
    return [
        Item(id=f"m{k:02d}", vars={"input": f"Reply with: out {k}"}, expected=f"out {k}")
        for k in range(n)
    ]


def test_an_interrupted_run_resumes_without_redoing_stored_items(env: Stack) -> None:
    store.push_dataset(env.engine, env.project_id, "resumable", model_items(20))
    scorers = [{"type": "equals", "value": "{{ expected }}"}, {"type": "contains", "value": "out"}]
    plan = runner.plan_run(
        env.engine, env.project_id, dataset="resumable",
        target=runner.Target("model", "sim-slow"), scorers=scorers,
    )  # fmt: skip

    def stored() -> set[tuple[str, int]]:
        assert plan.run_id is not None
        with env.engine.connect() as conn:
            return store.finished_pairs(conn, env.project_id, plan.run_id)

    async def interrupted() -> None:
        task = asyncio.create_task(
            runner.run_eval(env.engine, plan, gateway_url=env.url, api_key=env.key, concurrency=2)
        )
        while plan.run_id is None or len(stored()) < 6:  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = env.sim_requests()
    asyncio.run(interrupted())
    done = stored()
    assert 6 <= len(done) < 20
    assert plan.run_id is not None
    with env.engine.connect() as conn:
        assert store.get_run(conn, env.project_id, plan.run_id).status == "running"
    called_before_resume = env.sim_requests() - before

    resumed = runner.plan_resume(env.engine, env.project_id, plan.run_id)
    summary = asyncio.run(
        runner.run_eval(env.engine, resumed, gateway_url=env.url, api_key=env.key, concurrency=4)
    )
    assert summary.status == "completed"
    assert (summary.skipped, summary.results) == (len(done), 20 - len(done))
    assert env.sim_requests() - before - called_before_resume == 20 - len(done)
    assert summary.metrics["equals"] == {"mean": 1.0, "pass_rate": 1.0, "n": 20}
    with env.engine.connect() as conn:
        results = store.load_results(conn, env.project_id, plan.run_id)
    assert len({(r.item_id, r.repeat) for r in results.rows}) == 20
    with pytest.raises(runner.EvalSetupError, match="already completed"):
        runner.plan_resume(env.engine, env.project_id, plan.run_id)


def test_failing_calls_are_retried_then_stored_as_failed_scores(env: Stack) -> None:
    store.push_dataset(env.engine, env.project_id, "tiny", model_items(2))
    plan = runner.plan_run(
        env.engine, env.project_id, dataset="tiny", target=runner.Target("model", "broken"),
        scorers=[{"type": "contains", "value": "out"}], repeats=2,
    )  # fmt: skip
    retry = runner.RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    summary = asyncio.run(
        runner.run_eval(
            env.engine, plan, gateway_url=env.url, api_key=env.key, retry=retry, use_cache=False
        )
    )
    assert (summary.results, summary.errors, summary.calls) == (4, 4, 12)
    assert summary.metrics["contains"]["mean"] == 0.0
    assert plan.run_id is not None
    with env.engine.connect() as conn:
        errors = conn.execute(
            sa.text("SELECT error FROM eval_results WHERE run_id = :r"), {"r": plan.run_id}
        ).scalars()
        assert all("after 3 attempts" in e for e in errors)


def test_target_references_and_retry_after_parsing() -> None:
    assert runner.parse_target("qa").key == "qa@latest"
    assert runner.parse_target("qa@staging").key == "qa@staging"
    assert runner.parse_target("qa:v3") == runner.Target("prompt", "qa", version=3)
    for bad in ("qa@", "@x", "qa:x", "qa:0", ""):
        with pytest.raises(runner.EvalSetupError):
            runner.parse_target(bad)
    assert runner._retry_after("1.5") == 1.5
    assert runner._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert runner._retry_after("soon") is None


def test_transient_errors_are_retried_honouring_retry_after() -> None:
    from aiohttp import ClientSession, web

    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(asyncio.get_running_loop().time())
        if len(seen) == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": "0.3"})  # fmt: skip
        if len(seen) == 2:
            return web.json_response({"error": {"message": "oops"}}, status=503)
        body = {"model": "m", "choices": [{"message": {"content": "fine"}}]}
        return web.json_response(body, headers={"x-bastion-trace-id": "c" * 32})

    async def main() -> runner._CallResult:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        web_runner = web.AppRunner(app)
        await web_runner.setup()
        site = web.TCPSite(web_runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        policy = runner.RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.01)
        try:
            async with ClientSession() as session:
                caller = runner._Caller(session, f"http://127.0.0.1:{port}", "k", policy, "r", None)
                return await caller.call("m", [{"role": "user", "content": "x"}], {})
        finally:
            await web_runner.cleanup()

    result = asyncio.run(main())
    assert (result.text, result.error, result.calls, result.trace_id) == ("fine", None, 3, "c" * 32)
    assert seen[1] - seen[0] >= 0.29  # waited for Retry-After, not the 10 ms backoff
    assert seen[2] - seen[1] < 0.25


def test_judge_scorers_call_the_judge_model_through_the_gateway(
    cli_env: Stack, tmp_path: Path
) -> None:
    env = cli_env
    push_prompt(env, GOOD, "production")
    cli("dataset", "push", "judged", str(write_dataset(tmp_path / "j.jsonl", n=3)))
    verdict = json.dumps({"pass": True, "score": 0.8, "reason": "on topic"})
    rubric = json.dumps({"type": "llm-rubric", "value": f"Answers.\nReply with: {verdict}"})
    without = cli("run", "--dataset", "judged", "--prompt", "qa@production", "--scorer", rubric)
    assert without.exit_code == 2
    assert "needs an LLM judge" in without.output
    before = env.sim_requests()
    judged = cli(
        "run", "--dataset", "judged", "--prompt", "qa@production", "--scorer", rubric,
        "--judge-model", "sim-small", "--no-cache",
    )  # fmt: skip
    run_id = run_id_of(judged)
    assert env.sim_requests() - before == 3 + 3  # three answers (no cache), three verdicts
    with env.engine.connect() as conn:
        summary = store.get_run(conn, env.project_id, run_id).summary
    assert summary is not None
    assert summary["metrics"]["llm-rubric"] == {"mean": 0.8, "pass_rate": 1.0, "n": 3}


def test_an_unreadable_judge_verdict_is_an_item_error_not_a_score(
    cli_env: Stack, tmp_path: Path
) -> None:
    env = cli_env
    push_prompt(env, GOOD, "production")
    cli("dataset", "push", "unjudged", str(write_dataset(tmp_path / "u.jsonl", n=3)))
    rubric = json.dumps({"type": "llm-rubric", "value": "Answers.\nReply with: it seems fine"})
    judged = cli(
        "run", "--dataset", "unjudged", "--prompt", "qa@production", "--scorer", rubric,
        "--scorer", EQUALS, "--judge-model", "sim-small", "--no-cache", "--quiet",
    )  # fmt: skip
    assert judged.exit_code == 0, judged.output
    run_id = judged.stdout.strip()  # --quiet: the run id alone
    assert len(run_id) == 32
    with env.engine.connect() as conn:
        info = store.get_run(conn, env.project_id, run_id)
        results = store.load_results(conn, env.project_id, run_id)
        errors = conn.execute(
            sa.select(eval_results.c.error).where(eval_results.c.run_id == run_id)
        ).scalars()
        error_texts = list(errors)
    assert info.summary is not None
    assert info.summary["errors"] == 3
    assert "llm-rubric" not in info.summary["metrics"]  # no score of 0: no score at all
    assert info.summary["metrics"]["equals"]["mean"] == 1.0  # the other scorer still scored
    assert {r.metric for r in results.rows} == {"equals"}
    assert (
        error_texts
        == ["llm-rubric: malformed judge verdict: no JSON object with 'pass' or 'score'"] * 3
    )
