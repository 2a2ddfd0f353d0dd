"""Pushing templates the source shows to be past their limits, over real HTTP: 400s, never 500s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.auth import Role
from bastion.cli.main import app
from bastion.settings import Settings
from tests.conftest import LiveServer, start_live_server
from tests.prompts.test_prompt_api import call
from tests.server.test_api_auth import make_key

HOSTILE = [
    ("{{ " + "(" * 5000 + "x" + ")" * 5000 + " }}", "nested deeper than 32 levels"),
    ("{{ " + "[" * 5000 + "]" * 5000 + " }}", "nested deeper than 32 levels"),
    ("{{ " + " + ".join(["x"] * 3000) + " }}", "nested deeper than 32 levels"),
    ("{% if x %}" * 500 + "{% endif %}" * 500, "nested deeper than 32 levels"),
    ("{% for a in x %}" * 17 + "{% endfor %}" * 17, "loops and includes nested deeper than 16"),
    ("{{ 'a' * 10**9 }}", "'*' builds more than the 8,388,608 characters"),
    ("{{ [0] * 10**9 }}", "'*' builds more than the 8,388,608 characters"),
    ("{{ x.center(10**9) }}", "'.center()' builds more than the 8,388,608"),
    ("{{ (2 ** 1000) ** 1000 }}", "an integer of more than 4,300 digits"),
    ("{{ '%s' % x }}", "string formatting with '%' is not allowed"),
    ("{{ range(10**10)|list }}", "undeclared variable 'range'"),
    ("{{ x|center(10**9) }}", "unknown filter 'center'"),
]


@pytest.mark.parametrize(("text", "says"), HOSTILE)
def test_push_refuses_what_the_source_shows(live_server: LiveServer, text: str, says: str) -> None:
    writer = make_key(live_server, "default", Role.WRITE)
    prompt = {"name": "hostile", "variables": {"x": {}}, "text": text}
    status, out = call(live_server, "POST", "/api/v1/prompts", {"prompts": [prompt]}, writer)
    assert status == 400, out
    assert out["error"]["message"].startswith("prompt 'hostile': ")
    assert says in out["error"]["message"]
    status, out = call(live_server, "GET", "/api/v1/prompts", key=writer)
    assert (status, out["items"]) == (200, [])  # nothing stored


@pytest.fixture
def small_server(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    """A server whose templates may build 4 kB and nest 8 levels."""
    settings = Settings(
        home=tmp_path / "small",
        database_url=db_url,
        templates={"max_output_bytes": 4096, "max_nesting": 8},
    )
    server, stop = start_live_server(settings)
    try:
        yield server
    finally:
        stop()


def test_push_checks_against_the_configured_limits(small_server: LiveServer) -> None:
    writer = make_key(small_server, "default", Role.WRITE)

    def push(text: str) -> tuple[int, str]:
        prompt = {"name": "p", "variables": {"x": {}}, "text": text}
        status, out = call(small_server, "POST", "/api/v1/prompts", {"prompts": [prompt]}, writer)
        return status, str(out.get("error", {}).get("message", ""))

    assert push("{{ 'a' * 4000 }}{{ " + "(" * 6 + "x" + ")" * 6 + " }}")[0] == 201
    status, message = push("{{ 'a' * 5000 }}")
    assert (status, "more than the 4,096 characters" in message) == (400, True)
    status, message = push("{{ " + "(" * 9 + "x" + ")" * 9 + " }}")
    assert (status, "nested deeper than 8 levels" in message) == (400, True)


def test_cli_push_to_the_local_store_checks_the_configured_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str
) -> None:
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    folder = tmp_path / "prompts"
    folder.mkdir()
    deep = "{{ " + "(" * 10 + "x" + ")" * 10 + " }}"
    (folder / "deep.prompt.yaml").write_text(f'text: "{deep}"\nvariables: {{x: {{}}}}\n')
    assert CliRunner().invoke(app, ["prompts", "push", str(folder)]).exit_code == 0
    monkeypatch.setenv("BASTION_TEMPLATES__MAX_NESTING", "8")
    (folder / "deep.prompt.yaml").write_text(f'text: "{deep} "\nvariables: {{x: {{}}}}\n')
    result = CliRunner().invoke(app, ["prompts", "push", str(folder)])
    assert result.exit_code == 1
    assert "nested deeper than 8 levels" in result.output
