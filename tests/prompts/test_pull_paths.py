"""``bastion prompts pull`` writes only inside its directory: hostile names from the database or
from a malicious server (a real aiohttp server on loopback) fail the pull (exit 2) and nothing
is written anywhere."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from typer.testing import CliRunner, Result

from bastion.auth import ensure_project
from bastion.cli.main import app
from bastion.prompts import PromptSpec, registry
from bastion.safe_paths import UnsafePath, file_under
from bastion.store.schema import prompts


def pull(directory: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["prompts", "pull", str(directory), "--label", "latest", *extra])


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> None:
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "300")


@pytest.mark.usefixtures("local")
@pytest.mark.parametrize("hostile", ["../../escaped", "/tmp/escaped", "escaped\n", "a/b"])
def test_a_name_inserted_into_the_database_is_refused(
    engine: sa.Engine, tmp_path: Path, hostile: str
) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
        for name in ("good", "escaped"):
            spec = PromptSpec.from_dict({"name": name, "text": f"{name} text"})
            registry.push(conn, project_id, [spec], message="", author="t")
        # Written straight into the table, as a bad migration or another tool could.
        conn.execute(sa.update(prompts).where(prompts.c.name == "escaped").values(name=hostile))
    work = tmp_path / "work"
    target = work / "a" / "b" / "prompts"
    result = pull(target)
    assert result.exit_code == 2, result.output
    assert "refusing to pull (nothing written)" in result.output
    assert repr(hostile) in result.output
    assert files_under(tmp_path / "work") == []  # not even the good one
    assert not list(Path("/tmp").glob("escaped*"))


# -- a malicious server -------------------------------------------------------------------


class HostileServer:
    """An aiohttp server on loopback that lists and serves whatever prompts it is given."""

    def __init__(self, served: list[dict[str, Any]]) -> None:
        self.served = served
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    async def _list(self, request: web.Request) -> web.Response:
        items = [{"name": p["name"], "labels": {"production": 1}} for p in self.served]
        return web.json_response({"items": items})

    async def _get(self, request: web.Request) -> web.Response:
        wanted = request.match_info["tail"]
        for prompt in self.served:
            if prompt["name"] == wanted:
                return web.json_response(prompt)
        return web.json_response({"error": {"message": "no"}}, status=404)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        application = web.Application()
        application.router.add_get("/api/v1/prompts", self._list)
        application.router.add_get("/api/v1/prompts/{tail:[\\s\\S]+}", self._get)
        runner = web.AppRunner(application)

        async def boot() -> None:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> HostileServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def served(name: str, spec_name: str | None = None) -> dict[str, Any]:
    return {"name": name, "version": 1, "spec": {"name": spec_name or "ok", "text": "pwned"}}


@pytest.fixture
def no_local_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_CONFIG", "BASTION_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "300")


@pytest.mark.usefixtures("no_local_config")
@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        (served("../../../evil"), "invalid prompt name '../../../evil'"),
        (served("/tmp/evil-abs"), "invalid prompt name '/tmp/evil-abs'"),
        (served("evil\n"), "invalid prompt name 'evil\\n'"),
        (served("..", ".."), "invalid prompt name '..'"),
        (served("[/red]"), "invalid prompt name '[/red]'"),  # not Rich markup either
        (served("ok", "other"), "'other' is not the prompt's name 'ok'"),
    ],
)
def test_a_malicious_server_cannot_write_outside_the_directory(
    tmp_path: Path, prompt: dict[str, Any], why: str
) -> None:
    work = tmp_path / "work"
    target = work / "a" / "b" / "prompts"
    with HostileServer([served("fine", "fine"), prompt]) as server:
        result = pull(target, "--url", server.url, "--key", "k")
    assert result.exit_code == 2, result.output
    assert why in result.output
    assert files_under(work) == []
    assert not list(Path("/tmp").glob("evil*"))


@pytest.mark.usefixtures("no_local_config")
def test_a_planted_symlink_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "prompts"
    target.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (target / "fine.prompt.yaml").symlink_to(outside)
    with HostileServer([served("fine", "fine")]) as server:
        result = pull(target, "--url", server.url, "--key", "k")
    assert result.exit_code == 2, result.output
    assert "resolves outside" in " ".join(result.output.split())
    assert outside.read_text() == "keep"
    with HostileServer([served("fine", "fine")]) as server:  # a plain directory: written
        assert pull(tmp_path / "clean", "--url", server.url, "--key", "k").exit_code == 0
    assert files_under(tmp_path / "clean") == ["fine.prompt.yaml"]


def test_file_under_accepts_only_plain_names_inside(tmp_path: Path) -> None:
    assert file_under(tmp_path, "a.prompt.yaml") == tmp_path / "a.prompt.yaml"
    for bad in ("", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\x00b", "a\nb"):
        with pytest.raises(UnsafePath, match="not a plain file name"):
            file_under(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafePath, match="resolves outside"):
        file_under(tmp_path, "link")
