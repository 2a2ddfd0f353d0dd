"""``bastion retention apply`` and ``bastion erase`` on SQLite and PostgreSQL: counts, dry
runs, progress, JSON, and clear exit codes for bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bastion.cli.main import app
from tests.conftest import LiveServer
from tests.retention.support import digest, find_text, project, trace, write

Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    for name in ("BASTION_URL", "BASTION_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    config = tmp_path / "bastion.yaml"
    config.write_text("projects:\n  default:\n    retention:\n      spans_days: 30\n")

    def run(*args: str, configured: bool = True) -> tuple[int, str]:
        extra = ["--config", str(config)] if configured and args[0] == "retention" else []
        result = CliRunner().invoke(app, [*args, *extra])
        return result.exit_code, result.output

    return run


def seed(engine: sa.Engine) -> None:
    pid = project(engine)
    write(engine, pid, trace(days_ago=40, text="OLD-TEXT", user="erin", child_user="erin"))
    write(engine, pid, trace(days_ago=2, text="NEW-TEXT", user="frank"))


def test_dry_run_shows_counts_and_changes_nothing(engine: sa.Engine, cli: Cli) -> None:
    seed(engine)
    before = digest(engine)
    code, out = cli("retention", "apply", "--dry-run")
    assert code == 0, out
    line = next(line for line in out.splitlines() if "spans" in line and "default" in line)
    assert line.split()[:3] == ["│", "default", "│"]
    assert "3" in line.split()
    assert "traces affected 1" in " ".join(line.split())
    assert digest(engine) == before
    code, out = cli("retention", "apply", "--dry-run", "--json")
    assert code == 0, out
    (result,) = orjson.loads(out)["results"]
    assert (result["kind"], result["rows"], result["days"]) == ("spans", 3, 30)


def test_apply_deletes_and_reports(engine: sa.Engine, cli: Cli) -> None:
    seed(engine)
    code, out = cli("retention", "apply", "--json")
    assert code == 0, out
    report = orjson.loads(out)
    assert report["dry_run"] is False
    assert report["results"][0]["rows"] == 3
    assert report["results"][0]["traces_removed"] == 1
    assert find_text(engine, "OLD-TEXT") == []
    assert find_text(engine, "NEW-TEXT") != []
    code, out = cli("retention", "apply")
    assert code == 0, out
    assert "removed" in out
    assert "transactions in" in out


def test_apply_without_periods_keeps_everything(engine: sa.Engine, cli: Cli) -> None:
    seed(engine)
    code, out = cli("retention", "apply", configured=False)
    assert code == 0, out
    assert "no retention period is configured: everything is kept" in out
    assert find_text(engine, "OLD-TEXT") != []


def test_apply_to_an_unknown_project_exits_1(engine: sa.Engine, cli: Cli) -> None:
    code, out = cli("retention", "apply", "--project", "nope")
    assert code == 1
    assert "no project 'nope'" in out


def test_erase_prints_counts_and_a_digest(engine: sa.Engine, cli: Cli) -> None:
    seed(engine)
    code, out = cli("erase", "--user", "erin", "--json")
    assert code == 0, out
    summary = orjson.loads(out)
    assert (summary["traces"], summary["spans"], summary["subject"]) == (1, 3, "user")
    assert "erin" not in out
    assert find_text(engine, "OLD-TEXT") == []
    code, out = cli("erase", "--session", "none-such")
    assert code == 0, out
    assert "session sha256" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "name exactly one of --user, --trace or --session (got none)"),
        (["--user", "a", "--trace", "b" * 32], 2, "got user, trace"),
        (["--trace", "xyz"], 2, "32 hexadecimal characters"),
        (["--user", " "], 2, "user must not be empty"),
        (["--user", "a", "--project", "nope"], 1, "no project 'nope'"),
    ],
)
def test_erase_refuses_bad_input_with_an_exit_code(
    engine: sa.Engine, cli: Cli, args: list[str], code: int, message: str
) -> None:
    seed(engine)
    before = digest(engine)
    exit_code, out = cli("erase", *args)
    assert exit_code == code, out
    assert message in " ".join(out.split())
    assert digest(engine) == before


def test_erase_through_a_server(live_server: LiveServer, cli: Cli) -> None:
    engine = live_server.state.engine
    pid = live_server.state.default_project_id
    write(engine, pid, trace(days_ago=1, text="VIA-API", user="gus"))
    server = ["--url", live_server.url]
    code, out = cli("erase", "--user", "gus", *server, "--key", live_server.admin_key, "--json")
    assert code == 0, out
    assert orjson.loads(out)["traces"] == 1
    assert find_text(engine, "VIA-API") == []
    code, out = cli("erase", "--user", "gus", *server, "--key", "bst_wrong")
    assert code == 1
    assert "401" in out
