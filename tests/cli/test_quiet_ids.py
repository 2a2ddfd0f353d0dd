"""``--quiet`` on every command that creates something: stdout is the new thing's id alone, so
``ID=$(bastion … --quiet)`` works (local store, both databases)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bastion.cli.main import app
from bastion.store.engine import create_engine
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span

PROMPT = 'text: "Reply to {{ who }} kindly."\nvariables:\n  who: {type: string}\n'


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> Path:
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def quiet(*args: str) -> str:
    """The stdout of ``bastion ARGS --quiet``: exactly one line (or several, one per id)."""
    result = run(*args, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_each_create_command_prints_only_the_id(home: Path, db_url: str) -> None:
    prompts = home / "prompts"
    prompts.mkdir()
    (prompts / "greet.prompt.yaml").write_text(PROMPT)
    (prompts / "thank.prompt.yaml").write_text(PROMPT.replace("kindly", "with thanks"))
    assert quiet("prompts", "push", str(prompts)).splitlines() == ["greet@1", "thank@1"]
    (prompts / "greet.prompt.yaml").write_text(PROMPT.replace("kindly", "briefly"))
    assert quiet("prompts", "push", str(prompts)).splitlines() == ["greet@2", "thank@1"]

    (home / "stable.yaml").write_text("name: greeter\nprompts: {greet: 1}\nmodel: chat\n")
    (home / "candidate.yaml").write_text("name: greeter\nprompts: {greet: 2}\nmodel: chat\n")
    stable = quiet("release", "create", "-f", str(home / "stable.yaml"))
    candidate = quiet("release", "create", "-f", str(home / "candidate.yaml"))
    assert stable != candidate
    assert run("release", "show", stable).exit_code == 0  # the id, usable as printed
    assert quiet("release", "create", "-f", str(home / "stable.yaml")) == stable  # unchanged
    assert run("release", "deploy", "greeting", stable).exit_code == 0
    rollout = quiet("release", "rollout", "greeting", "--candidate", candidate, "--steps", "10")
    assert len(rollout) == 32
    status = run("release", "status", "greeting", "--json")
    assert rollout in status.stdout

    rows = [{"id": f"q{i}", "question": f"q {i}", "expected": f"a {i}"} for i in range(3)]
    data = home / "golden.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert quiet("eval", "dataset", "push", "golden", str(data)) == "golden@1"
    assert quiet("eval", "dataset", "push", "golden", str(data)) == "golden@1"  # unchanged

    now = time.time_ns()
    spans = [
        Span(
            os.urandom(16).hex(), os.urandom(8).hex(), "chat", now - i, now - i + 5,
            operation="chat", request_model="chat", input=f"question {i}", output=f"answer {i}",
        )
        for i in range(3)
    ]  # fmt: skip
    engine = create_engine(db_url)
    try:
        SpanWriter(engine).write([(1, s) for s in spans])
    finally:
        engine.dispose()
    assert quiet("eval", "dataset", "from-traces", "prod", "--since", "1h") == "prod@1"


def test_quiet_with_a_promptfoo_config_is_refused(home: Path) -> None:
    config = home / "promptfooconfig.yaml"
    config.write_text('prompts: ["Hi"]\nproviders: [echo]\ntests: [{vars: {}}]\n')
    result = run("eval", "run", "-c", str(config), "--quiet")
    assert result.exit_code == 2
    assert "--quiet prints a run id" in result.output
