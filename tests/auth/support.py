"""Helpers of the sign-in tests: servers with their own auth settings, users, browsers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.auth.roles import PersonRole
from bastion.auth.users import create_user, set_role
from bastion.settings import AuthSettings, Settings
from tests.conftest import LiveServer, start_live_server

PASSWORD = "correct horse battery staple"

ServerFactory = Callable[..., LiveServer]


def auth_settings(tmp_path: Path, db_url: str, **auth: Any) -> Settings:
    """Settings on the parametrised database with ``auth`` fields overridden."""
    return Settings(home=tmp_path / "home", database_url=db_url, auth=AuthSettings(**auth))


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[ServerFactory]:
    """Start servers on the test's database with given ``auth`` settings; all stopped after."""
    stops: list[Callable[[], None]] = []

    def start(**auth: Any) -> LiveServer:
        server, stop = start_live_server(auth_settings(tmp_path, db_url, **auth))
        stops.append(stop)
        return server

    yield start
    for stop in reversed(stops):
        stop()


def add_user(
    server: LiveServer,
    name: str,
    role: str = "member",
    *,
    project: str = "default",
    password: str = PASSWORD,
    more: dict[str, str] | None = None,
) -> None:
    """Create ``name`` with ``role`` in ``project`` (and the roles in ``more`` elsewhere)."""
    with server.state.engine.begin() as conn:
        create_user(conn, name, password=password, role=PersonRole(role), project=project)
        for other, other_role in (more or {}).items():
            set_role(conn, name, PersonRole(other_role), other)


def browser(server: LiveServer) -> httpx.Client:
    """A client that keeps cookies like a browser and does not follow redirects."""
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)


def sign_in(client: httpx.Client, name: str, password: str = PASSWORD) -> dict[str, Any]:
    """Sign in with JSON; the answer's body (user, csrf_token, …)."""
    response = client.post("/auth/login", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def session_cookie(response: httpx.Response) -> str | None:
    """The value of the session cookie a response sets, if it sets one."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == "bastion_session":
            return rest.split(";", 1)[0]
    return None


def error(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message
