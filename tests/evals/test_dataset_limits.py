"""Dataset uploads held to the ``limits:`` caps and the name grammar, over real HTTP and in the
CLI, on SQLite and PostgreSQL: a refusal is a 4xx / exit 2 naming the cap, and nothing is
stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from bastion.auth import ensure_project
from bastion.cli.main import app
from bastion.evals import store
from bastion.parsing import InputLimits
from bastion.settings import Settings
from tests.conftest import LiveServer, start_live_server
from tests.parsing.test_safe_yaml import billion_laughs
from tests.prompts.test_prompt_api import call
from tests.server.test_otlp_receiver import http

LIMITS = InputLimits(
    max_document_bytes=64 * 1024, max_items=20, max_values=2_000, max_depth=8,
    max_field_chars=500,
)  # fmt: skip
HOSTILE_NAMES = ["../../x", "/etc/passwd", "a\x00b", "abc\n", "a b", ".hidden"]


def laughs_rows(levels: int) -> str:
    """A dataset (a list of rows) whose rows alias a billion-laughs list ``levels`` deep."""
    bomb = billion_laughs(levels).splitlines()
    return "\n".join(f"- {{q: {line.split(': ', 1)[1]}}}" for line in bomb) + "\n"


def deep_json(depth: int) -> str:
    """A JSONL row whose ``q`` is ``depth`` nested lists (built as text: no encoder nests so)."""
    return '{"q": ' + "[" * depth + '"leaf"' + "]" * depth + "}"


def deep_row(depth: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return {"q": value}


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    live, stop = start_live_server(
        Settings(home=tmp_path / "home", database_url=db_url, limits=LIMITS)
    )
    try:
        yield live
    finally:
        stop()


def push(server: LiveServer, body: dict[str, Any]) -> tuple[int, str]:
    status, out = call(server, "POST", "/api/v1/evals/datasets", body)
    return status, out["error"]["message"] if status >= 400 else out["status"]


def stored(server: LiveServer) -> list[Any]:
    status, out = call(server, "GET", "/api/v1/evals/datasets")
    assert status == 200
    items: list[Any] = out["items"]
    return items


def test_the_billion_laughs_over_the_api_is_a_400_and_stores_nothing(server: LiveServer) -> None:
    for levels in (3, 9):  # 729 strings, and the 9**9 of the classic body
        status, message = push(server, {"name": "lol", "content": laughs_rows(levels),
                                        "format": "yaml"})  # fmt: skip
        assert status == 400, message
        assert "content.yaml:1: YAML aliases and anchors are not allowed (&a0)" in message
    assert stored(server) == []


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"items": [deep_row(9)]}, 400, "items[0]: nested deeper than 8 levels (limits.max_depth)"),
        (
            {"items": [{"q": str(i)} for i in range(21)]},
            400,
            "more than 20 items (limits.max_items)",
        ),
        (
            {"items": [{"q": "x" * 501}]},
            400,
            "501 characters is over the limit of 500 (limits.max_field_chars)",
        ),
        (
            {"items": [{"q": list(range(300)), "i": i} for i in range(10)]},
            400,
            "(limits.max_values)",
        ),
        (
            {"content": deep_json(9), "format": "jsonl"},
            400,
            "content.jsonl:1: nested deeper than 8 levels (limits.max_depth)",
        ),
        (
            {"content": deep_json(30_000), "format": "jsonl"},
            400,
            "(limits.max_depth)",
        ),  # a RecursionError in the standard JSON reader
        (
            {"content": "\n".join(f'{{"q": "{i}"}}' for i in range(21)), "format": "jsonl"},
            400,
            "content.jsonl:21: more than 20 items (limits.max_items)",
        ),
        (
            {"content": "q,expected\n" + "y" * 501 + ",z\n", "format": "csv"},
            400,
            "content.csv:2: a value of 501 characters",
        ),
        (
            {"content": "q\n" + "\n".join(map(str, range(21))), "format": "csv"},
            400,
            "(limits.max_items)",
        ),
        (
            {"content": "- q: [[[[[[[[[x]]]]]]]]]\n", "format": "yaml"},
            400,
            "content.yaml:1: nested deeper than 8 levels (limits.max_depth)",
        ),
        ({"content": "- q: !!python/name:os.system x\n", "format": "yaml"}, 400, "tag"),
        (
            {"content": "# " + "x" * 70_000 + "\n- q: 1\n", "format": "yaml"},
            413,
            "(limits.max_document_bytes)",
        ),
    ],
)
def test_uploads_over_a_cap_name_it_and_store_nothing(
    server: LiveServer, body: dict[str, Any], status: int, named: str
) -> None:
    got, message = push(server, {"name": "big", **body})
    assert got == status, message
    assert named in message
    assert stored(server) == []


def test_a_body_deeper_than_the_json_reader_goes_is_a_400(server: LiveServer) -> None:
    raw = b'{"name": "big", "items": [' + deep_json(5000).encode() + b"]}"
    headers = {**server.headers(), "Content-Type": "application/json"}
    status, _, body = http("POST", server.url + "/api/v1/evals/datasets", body=raw, headers=headers)
    assert status == 400, body
    assert b"recursion limit exceeded" in body  # the API's JSON reader stops at 200 levels
    assert stored(server) == []


def test_an_upload_within_the_caps_is_stored(server: LiveServer) -> None:
    rows = [{"q": str(i), "deep": deep_row(6)["q"], "long": "x" * 500} for i in range(20)]
    assert push(server, {"name": "ok", "items": rows}) == (201, "created")
    yaml_rows = "".join(f"- {{q: '{i}', expected: a}}\n" for i in range(20))
    assert push(server, {"name": "ok-yaml", "content": yaml_rows, "format": "yaml"}) == (
        201, "created",
    )  # fmt: skip
    assert [d["item_count"] for d in stored(server)] == [20, 20]


def test_hostile_dataset_names_are_a_400_over_the_api(server: LiveServer) -> None:
    for name in HOSTILE_NAMES:
        status, message = push(server, {"name": name, "items": [{"q": "1"}]})
        assert status == 400, (name, message)
        # A NUL may be refused by the body reader before the name rule sees it.
        assert "invalid dataset name" in message or "NUL" in message, message
    status, out = call(server, "POST", "/api/v1/evals/datasets/a%0Ab/from-traces", {})
    assert status == 400
    assert "invalid dataset name 'a\\nb'" in out["error"]["message"]
    assert stored(server) == []


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> None:
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    monkeypatch.setenv("BASTION_LIMITS__MAX_ITEMS", "20")
    monkeypatch.setenv("BASTION_LIMITS__MAX_DEPTH", "8")
    monkeypatch.setenv("COLUMNS", "300")


def dataset_push(name: str, file: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["eval", "dataset", "push", name, str(file), *extra])


def datasets(engine: sa.Engine) -> list[store.DatasetInfo]:
    with engine.begin() as conn:
        return store.list_datasets(conn, ensure_project(conn))


@pytest.mark.usefixtures("cli_env")
def test_the_cli_refuses_bombs_deep_rows_and_too_many_items(
    tmp_path: Path, engine: sa.Engine
) -> None:
    cases = {
        "bomb.yaml": (laughs_rows(9), "bomb.yaml:1: YAML aliases and anchors are not allowed"),
        "deep.jsonl": (deep_json(100_000), "(limits.max_depth)"),
        "many.csv": ("q\n" + "\n".join(map(str, range(21))), "(limits.max_items)"),
    }
    for filename, (text, named) in cases.items():
        path = tmp_path / filename
        path.write_text(text)
        result = dataset_push("golden", path)
        assert result.exit_code == 2, result.output
        assert named in " ".join(result.output.split()), result.output
    assert datasets(engine) == []
    path = tmp_path / "ok.csv"
    path.write_text("q\n" + "\n".join(map(str, range(20))))
    assert dataset_push("golden", path).exit_code == 0
    assert [d.item_count for d in datasets(engine)] == [20]


@pytest.mark.usefixtures("cli_env")
def test_the_cli_refuses_hostile_dataset_names(tmp_path: Path, engine: sa.Engine) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text('{"q": "1"}\n')
    for name in HOSTILE_NAMES:
        result = dataset_push(name, path)
        assert result.exit_code == 2, (name, result.output)
        assert "invalid dataset name" in result.output
    for project in ("../x", "Team", "a\nb"):
        result = dataset_push("golden", path, "--project", project)
        assert result.exit_code == 2, (project, result.output)
        assert "invalid project name" in " ".join(result.output.split())
    assert datasets(engine) == []


def test_prompt_specs_pushed_over_the_api_are_held_to_the_same_caps(server: LiveServer) -> None:
    spec = {"name": "deep", "text": "hi", "metadata": {"m": deep_row(8)["q"]}}
    status, out = call(server, "POST", "/api/v1/prompts", {"prompts": [spec]})
    assert status == 400, out
    assert "prompts[0]: nested deeper than 8 levels (limits.max_depth)" in out["error"]["message"]
    spec["metadata"] = {"m": deep_row(5)["q"]}
    status, out = call(server, "POST", "/api/v1/prompts", {"prompts": [spec]})
    assert status == 201, out
