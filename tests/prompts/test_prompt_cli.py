"""``bastion prompts`` on the local store (both databases) and against a running server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bastion.cli.main import app
from bastion.prompts import load_prompt_dir, load_prompt_file
from tests.conftest import LiveServer

SUMMARIZE = """\
description: Summarise a support ticket
model: gpt-4o-mini
params:
  temperature: 0.2
variables:
  ticket: {type: string}
messages:
  - role: system
    content: You summarise support tickets in one sentence.
  - role: user
    content: "{{ ticket }}"
"""

GREETING = """\
text: Hello {{ who }}, {% include "sign-off" %}
variables:
  who: {type: string}
"""

SIGN_OFF = "text: kind regards.\n"


@pytest.fixture
def local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str
) -> None:  # the CLI reads its settings from the environment, like a user's shell
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["prompts", *args])


def write_prompts(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summarize.prompt.yaml").write_text(SUMMARIZE)
    (directory / "greeting.prompt.yaml").write_text(GREETING)
    (directory / "sign-off.prompt.yaml").write_text(SIGN_OFF)
    return directory


def rows(output: str) -> dict[str, str]:
    """First cell → whole line, for the rows of a Rich table."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells:
            found[cells[0]] = " ".join(cells[1:])
    return found


@pytest.mark.usefixtures("local")
def test_push_label_rollback_pull_on_the_local_store(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "prompts")
    result = run("push", str(src), "-m", "first", "--git-sha", "abc123")
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert table["summarize"].startswith("created v1")
    assert table["greeting"].startswith("created v1")
    assert rows(run("push", str(src)).stdout)["summarize"].startswith("unchanged v1")

    (src / "summarize.prompt.yaml").write_text(SUMMARIZE.replace("one sentence", "two sentences"))
    pushed = rows(run("push", str(src), "-m", "longer").stdout)
    assert pushed["summarize"].startswith("updated v2")
    assert pushed["greeting"].startswith("unchanged v1")

    assert run("label", "summarize", "1", "production").exit_code == 0
    moved = run("label", "summarize", "2", "production", "--reason", "ship it")
    assert moved.exit_code == 0, moved.output
    assert "production v1 → v2" in moved.stdout
    listing = rows(run("list").stdout)
    assert listing["summarize"].startswith("v2 production=v2 Summarise a support ticket")

    diff = run("diff", "summarize", "1", "production")
    assert diff.exit_code == 0, diff.output
    assert "-You summarise support tickets in one sentence." in diff.stdout
    assert "+You summarise support tickets in two sentences." in diff.stdout

    back = run("rollback", "summarize", "production", "--reason", "too long")
    assert back.exit_code == 0, back.output
    assert "production v2 → v1" in back.stdout
    log = run("log", "summarize")
    assert log.exit_code == 0, log.output
    assert "rollback" in log.stdout
    assert "too long" in log.stdout
    assert "abc123" in log.stdout

    out = tmp_path / "pulled"
    pulled = run("pull", str(out))
    assert pulled.exit_code == 0, pulled.output
    assert sorted(p.name for p in out.iterdir()) == ["summarize.prompt.yaml"]
    assert "greeting" in pulled.stderr  # no production label: reported, not written
    assert load_prompt_file(out / "summarize.prompt.yaml") == load_prompt_file(
        write_prompts(tmp_path / "original") / "summarize.prompt.yaml"
    )
    assert run("pull", str(out), "--label", "latest").exit_code == 0
    assert {s.name: s for s in load_prompt_dir(out)} == {s.name: s for s in load_prompt_dir(src)}


@pytest.mark.usefixtures("local")
def test_invalid_files_are_all_reported_and_nothing_is_pushed(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "prompts")
    (src / "broken.prompt.yaml").write_text("text: Hi {{ nobody }}\n")
    (src / "wrong.prompt.yaml").write_text("name: other\ntext: hi\n")
    result = run("push", str(src))
    assert result.exit_code == 2, result.output
    assert re.search(r"broken\.prompt\.yaml:1: .*undeclared variable 'nobody'", result.stderr)
    assert re.search(r"wrong\.prompt\.yaml:1: .*does not match the file name", result.stderr)
    assert "nothing pushed" in result.stderr
    listed = run("list")
    assert listed.exit_code == 0, listed.output
    assert "summarize" not in listed.stdout

    missing = run("label", "summarize", "1", "production")
    assert missing.exit_code == 1
    assert "no prompt 'summarize'" in missing.stderr


def test_push_and_label_against_a_running_server(live_server: LiveServer, tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "prompts")
    remote = ["--url", live_server.url, "--key", live_server.admin_key]
    pushed = run("push", str(src), "-m", "from ci", *remote)
    assert pushed.exit_code == 0, pushed.output
    assert rows(pushed.stdout)["sign-off"].startswith("created v1")
    labelled = run("label", "greeting", "1", "staging", *remote)
    assert labelled.exit_code == 0, labelled.output
    assert "staging — → v1" in labelled.stdout
    assert rows(run("list", *remote).stdout)["greeting"].startswith("v1 staging=v1")
    bad = run("label", "greeting", "5", "staging", *remote)
    assert bad.exit_code == 1
    assert "404: prompt 'greeting' has no version 5" in bad.stderr
    denied = run("push", str(src), "--url", live_server.url, "--key", "bst_wrong")
    assert denied.exit_code == 1
    assert "401" in denied.stderr
