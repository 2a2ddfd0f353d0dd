"""A seeded server per database backend, shared by a test module, and signed-in clients.

Seeding (people, a registry, a 30,000-span trace) takes seconds, so each module starts one
server per backend and its tests only read it, or change what they alone look at.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from bastion.settings import Settings
from tests.conftest import PG_URL, LiveServer, start_live_server
from tests.ui.seed import PASSWORD, Seeded, seed

UI_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")


@dataclass
class UiSite:
    """A running server with the seeded data."""

    server: LiveServer
    seeded: Seeded
    backend: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def engine(self) -> sa.Engine:
        engine: sa.Engine = self.server.state.engine
        return engine

    def client(self, user: str | None = None) -> Browsing:
        """A client with ``user`` signed in (none: signed out); redirects are not followed."""
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        if user is None:
            return Browsing(client, "")
        answer = client.post("/auth/login", json={"name": user, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return Browsing(client, answer.json()["csrf_token"])


@dataclass
class Browsing:
    """An HTTP client with a browser session, and the session's CSRF token."""

    http: httpx.Client
    csrf: str

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.http.get(path, **kwargs)  # type: ignore[arg-type]

    def post_form(self, path: str, fields: dict[str, str], *, csrf: bool = True) -> httpx.Response:
        data = {**fields, "csrf_token": self.csrf} if csrf else fields
        return self.http.post(path, data=data)


def _backends(config: pytest.Config) -> list[str]:
    return list(config.getoption("--db") or ["sqlite", "postgresql"])


def _pg_schema() -> tuple[str, sa.Engine, str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    return schema, admin, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ui_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UiSite]:
    backend: str = request.param
    if backend not in _backends(request.config):
        pytest.skip(f"--db does not include {backend}")
    home = tmp_path_factory.mktemp(f"ui-{backend}")
    admin = None
    if backend == "sqlite":
        url = f"sqlite:///{home / 'bastion.db'}"
    else:
        schema, admin, url = _pg_schema()
    server, stop = start_live_server(Settings(home=home / "home", database_url=url))
    try:
        yield UiSite(server, seed(server.state.engine), backend)
    finally:
        stop()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save their screenshots (``BASTION_UI_SCREENSHOTS`` to choose)."""
    chosen = os.environ.get("BASTION_UI_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
