"""``bastion release`` on the local store (both databases) and against a running server."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bastion.cli.main import app
from tests.conftest import LiveServer

PROMPT = """\
text: "Reply to {{ who }} kindly."
variables:
  who: {type: string}
"""

STABLE = "name: greeter\nprompts: {greet: 1}\nmodel: chat\nparams: {temperature: 0.1}\n"
CANDIDATE = "name: greeter\nprompts: {greet: 2}\nmodel: chat-large\nparams: {temperature: 0.1}\n"


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> Path:
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "greet.prompt.yaml").write_text(PROMPT)
    assert run_cli("prompts", "push", str(prompts)).exit_code == 0
    (prompts / "greet.prompt.yaml").write_text(PROMPT.replace("kindly", "briefly"))
    assert run_cli("prompts", "push", str(prompts)).exit_code == 0
    (tmp_path / "stable.yaml").write_text(STABLE)
    (tmp_path / "candidate.yaml").write_text(CANDIDATE)
    return tmp_path


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def release(*args: str) -> Result:
    return run_cli("release", *args)


def _id(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output.split("release ")[1].split()[0]


def test_release_commands_on_the_local_store(local: Path) -> None:
    stable = _id(release("create", "-f", str(local / "stable.yaml")))
    candidate = _id(release("create", "-f", str(local / "candidate.yaml")))
    again = release("create", "-f", str(local / "stable.yaml"))
    assert "unchanged" in again.output
    listed = release("list")
    assert stable in listed.output
    assert candidate in listed.output
    shown = release("show", stable[:8])
    assert '"greet": 1' in shown.output
    diff = release("diff", stable, candidate)
    assert diff.exit_code == 0, diff.output
    assert "chat-large" in diff.output
    assert "briefly" in diff.output
    assert "kindly" in diff.output

    assert release("deploy", "greeting", stable, "--reason", "first").exit_code == 0
    started = release(
        "rollout", "greeting", "--candidate", candidate, "--steps", "10,50", "--bake", "2s"
    )
    assert started.exit_code == 0, started.output
    assert "at 10%" in started.output
    status = release("status", "greeting")
    assert "running" in status.output
    assert candidate in status.output
    listed_routes = release("routes")
    assert "greeting" in listed_routes.output
    assert f"running canary of {candidate} at 10%" in listed_routes.output
    assert "paused" in release("pause", "greeting", "-r", "holiday").output
    aborted = release("abort", "greeting", "-r", "not now")
    assert aborted.exit_code == 0, aborted.output
    assert "no rollout in progress" in aborted.output
    history = release("history", "greeting")
    for action in ("deploy", "start", "pause", "abort"):
        assert action in history.output
    assert "holiday" in history.output
    at = release("history", "greeting", "--at", "2000-01-01T00:00")
    assert "nothing was deployed" in at.output
    now = release("history", "greeting", "--at", "2999-01-01T00:00")
    assert f"served {stable}" in now.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "-f", "/nonexistent/release.yaml"], "No such file"),
        (["deploy", "greeting", "nope"], "no release 'nope'"),
        (["deploy", "greeting", "greeter", "--env", "qa"], "--env must be"),
        (
            ["rollout", "greeting", "--candidate", "greeter", "--steps", "9,3"],
            "steps must increase",
        ),
        (
            ["rollout", "greeting", "--candidate", "greeter", "--require-gate", "justone"],
            "BASELINE_RUN:CANDIDATE_RUN",
        ),
        (["promote", "greeting"], "no rollout in progress"),
        (["history", "greeting", "--at", "noonish"], "ISO time"),
    ],
)
def test_bad_input_is_a_cli_error_naming_it(local: Path, args: list[str], message: str) -> None:
    _id(release("create", "-f", str(local / "stable.yaml")))
    result = release(*args)
    assert result.exit_code != 0
    assert message in result.output


def test_release_commands_against_a_server(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_URL", live_server.url)
    monkeypatch.setenv("BASTION_API_KEY", live_server.admin_key)
    monkeypatch.setenv("COLUMNS", "200")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "greet.prompt.yaml").write_text(PROMPT)
    assert run_cli("prompts", "push", str(prompts)).exit_code == 0
    (tmp_path / "stable.yaml").write_text(STABLE)
    stable = _id(release("create", "-f", str(tmp_path / "stable.yaml")))
    assert release("deploy", "greeting", stable).exit_code == 0
    status = release("status", "greeting")
    assert stable in status.output
    missing = release("status", "other")
    assert missing.exit_code == 1
    assert "404" in missing.output


def test_status_shows_the_latest_analysis_per_arm(local: Path, db_url: str) -> None:
    from bastion.releases import rollouts
    from bastion.releases.analysis import Sample, judge
    from bastion.releases.model import make_policy
    from bastion.store.engine import create_engine
    from bastion.store.transactions import run_write

    stable = _id(release("create", "-f", str(local / "stable.yaml")))
    candidate = _id(release("create", "-f", str(local / "candidate.yaml")))
    assert release("deploy", "greeting", stable).exit_code == 0
    assert release("rollout", "greeting", "--candidate", candidate).exit_code == 0
    base = [Sample("stable", i < 1, 100.0, 50.0, 0.001) for i in range(100)]
    worse = [Sample("canary", i < 9, 100.0, 50.0, 0.001) for i in range(30)]
    verdict = judge(base, worse, make_policy(strategy="canary"), baked=False)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            (rollout,) = rollouts.list_rollouts(conn, 1, "greeting")
        analysis = {"at": "now", **verdict.to_dict()}
        run_write(
            engine,
            lambda c: rollouts.save_analysis(
                c, 1, rollout.rollout_id, 0, analysis, verdict.summary
            ),
        )
    finally:
        engine.dispose()
    shown = release("status", "greeting")
    assert shown.exit_code == 0, shown.output
    assert "analysis: fail" in shown.output
    assert "30.0%" in shown.output  # the candidate's error rate
    # each compared metric with the test that judged it and its p-value
    assert "error rate: +" in shown.output
    assert "two-proportion z-test (one-sided): p = " in shown.output
    assert "p90 latency:" in shown.output
    assert "Fisher's exact test on requests beyond the limit (one-sided): p = " in shown.output
    assert "cache hits" in shown.output  # counted apart from the compared upstream calls
