"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL tests each get a fresh schema in the ``test`` database (``BASTION_TEST_PG_URL``
overrides the server), so tests can run side by side without seeing each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.settings import Settings
from bastion.store import migrate
from bastion.store.engine import create_engine

PG_URL = os.environ.get("BASTION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        action="append",
        choices=["sqlite", "postgresql"],
        help="database backends to run storage tests on (default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames:
        backends = metafunc.config.getoption("--db") or ["sqlite", "postgresql"]
        metafunc.parametrize("db_backend", backends)


@pytest.fixture(autouse=True)
def _close_http_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every HTTP client a test opens through httpx (the official SDKs' too: ``openai`` builds
    on its fork ``httpx2``) is closed when the test ends.

    Left to the garbage collector, a client caught in an exception's reference cycle can lose
    its pooled socket before it closes it, and the ResourceWarning then fails whichever later
    test the collection happens to run in.
    """
    import importlib

    opened: list[Any] = []
    for module_name in ("httpx", "httpx2"):
        try:
            client_class = importlib.import_module(module_name).Client
        except ImportError:
            continue
        original = client_class.__init__

        def opening(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            __original(self, *args, **kwargs)
            opened.append(self)

        monkeypatch.setattr(client_class, "__init__", opening)
    yield
    for client in opened:
        client.close()


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a brand-new, empty schema; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database URL for an empty database of the parametrised backend."""
    if db_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'bastion.db'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """A migrated engine on the parametrised backend."""
    eng = create_engine(db_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """Settings whose home is a temporary directory and whose database is the parametrised one."""
    return Settings(home=tmp_path / "home", database_url=db_url)


# -- a real server on loopback --------------------------------------------------------------


@dataclass
class LiveServer:
    """A Bastion server running on a loopback port in a background thread."""

    url: str
    admin_key: str
    settings: Settings
    app: Any

    @property
    def state(self) -> Any:
        from bastion.services.state import STATE

        return self.app[STATE]

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}


def start_live_server(settings: Settings) -> tuple[LiveServer, Callable[[], None]]:
    """Start ``create_app(settings)`` on a free loopback port; returns the server and a stopper."""
    from bastion.auth import create_key
    from bastion.server.app import create_app
    from bastion.server.threaded import serve_in_thread
    from bastion.store.engine import create_engine as make_engine

    eng = make_engine(settings.resolved_database_url)
    migrate.upgrade(eng)
    with eng.begin() as conn:
        admin_key = create_key(conn, "default", name="test-admin").secret
    eng.dispose()

    app = create_app(settings)
    served = serve_in_thread(app)
    server = LiveServer(served.url, admin_key, settings, app)
    return server, served.stop


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    server, stop = start_live_server(settings)
    try:
        yield server
    finally:
        stop()


# -- a PostgreSQL database that can be taken down and brought back -------------------------


class PgOutage:
    """A dedicated database whose outage is real: connections are killed and new ones refused."""

    def __init__(self) -> None:
        self.name = f"bastion_outage_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        self.url = sa.make_url(PG_URL).set(database=self.name).render_as_string(hide_password=False)

    def _terminate(self, conn: sa.Connection) -> None:
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": self.name},
        )

    def down(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
            self._terminate(conn)

    def up(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
            self._terminate(conn)
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}"'))
        self.admin.dispose()


@pytest.fixture
def pg_outage() -> Iterator[PgOutage]:
    outage = PgOutage()
    try:
        yield outage
    finally:
        outage.drop()
