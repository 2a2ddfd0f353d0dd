"""Helpers of the roles and approvals tests: a server with a project policy, people of every
role signed in through the real sign-in route, keys of every role, and calls as each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bastion.auth import Role, create_key
from bastion.auth.roles import PersonRole
from bastion.auth.users import create_user
from bastion.settings import ProjectSettings, Settings
from bastion.store.schema import audit_log
from tests.auth.support import PASSWORD
from tests.conftest import LiveServer, start_live_server

# The people of project "default" the tests act as, by name.
PEOPLE = {
    "olga": PersonRole.OWNER,
    "alan": PersonRole.ADMIN,
    "ada": PersonRole.MEMBER,
    "grace": PersonRole.MEMBER,
    "vic": PersonRole.VIEWER,
}


@dataclass
class Caller:
    """Someone calling the server: a signed-in person (cookie and CSRF token) or a key."""

    name: str
    client: httpx.Client
    headers: dict[str, str]

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        """One request; ``body`` sent as JSON when given."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, path, headers=headers, **kwargs)


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[ServerFactory]:
    """Start servers on the test's database with a policy per project (``approvals=`` the
    policy of "default"); all stopped after the test."""
    stops: list[Callable[[], None]] = []

    def start(approvals: dict[str, Any] | None = None, **projects: dict[str, Any]) -> LiveServer:
        configured = {slug: ProjectSettings(**values) for slug, values in projects.items()}
        if approvals is not None:
            configured["default"] = ProjectSettings(approvals=approvals)
        settings = Settings(home=tmp_path / "home", database_url=db_url, projects=configured)
        server, stop = start_live_server(settings)
        stops.append(stop)
        return server

    yield start
    for stop in reversed(stops):
        stop()


def add_people(server: LiveServer, people: dict[str, PersonRole] = PEOPLE) -> None:
    with server.state.engine.begin() as conn:
        for name, role in people.items():
            create_user(conn, name, password=PASSWORD, role=role)


def person(server: LiveServer, name: str) -> Caller:
    """``name`` signed in through ``POST /auth/login``, sending its CSRF token on every call."""
    client = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    response = client.post("/auth/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return Caller(name, client, {"X-CSRF-Token": response.json()["csrf_token"]})


def key(server: LiveServer, role: Role, project: str = "default") -> Caller:
    """A new key of ``role`` in ``project``."""
    with server.state.engine.begin() as conn:
        secret = create_key(conn, project, name=f"test-{role.value}", role=role).secret
    server.state.keys.reload()  # known at once, however many keys were made a moment ago
    client = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    return Caller(f"key:{role.value}", client, {"Authorization": f"Bearer {secret}"})


def nobody(server: LiveServer) -> Caller:
    """Someone with neither a key nor a session."""
    client = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    return Caller("nobody", client, {})


def error(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message


def audit_actions(server: LiveServer) -> list[tuple[str, str, str]]:
    """(actor, action, object id) of every audit record, oldest first."""
    with server.state.engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.action, audit_log.c.object_id).order_by(
                audit_log.c.seq
            )
        ).all()
    return [(r.actor, r.action, r.object_id) for r in rows]
