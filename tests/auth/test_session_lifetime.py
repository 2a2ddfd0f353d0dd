"""When sessions end: idle and absolute expiry, a disabled user, a changed role, and the bound
on how long a server process trusts what it read."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa

from bastion.auth.roles import PersonRole
from bastion.auth.users import set_disabled, set_role
from bastion.cli.common import local_engine
from bastion.server.cookie_auth import SIGN_IN
from bastion.settings import AuthSettings, Settings
from bastion.store.schema import users
from tests.auth.support import PASSWORD, ServerFactory, add_user, browser, error, sign_in
from tests.conftest import LiveServer, PgOutage, start_live_server


def _wait_for(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until ``check()`` held; fails after ``within_s``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, "not within the bound"
        time.sleep(0.05)
    return time.monotonic() - started


def _elsewhere(server: LiveServer, change: Callable[[sa.Connection], object]) -> None:
    """Make ``change`` from another process's point of view: its own engine, as the CLI does."""
    with local_engine(server.settings) as engine, engine.begin() as conn:
        change(conn)


def test_an_idle_session_ends(serve: ServerFactory) -> None:
    server = serve(session_idle_s=1.0, session_cache_s=0.2)
    add_user(server, "ada")
    with browser(server) as client:
        sign_in(client, "ada")
        for _ in range(6):  # in use: the idle time starts again each time
            time.sleep(0.4)
            assert client.get("/api/v1/me").status_code == 200
        time.sleep(1.3)
        response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert "session has ended" in error(response)


def test_a_session_ends_at_its_absolute_expiry_even_in_use(serve: ServerFactory) -> None:
    server = serve(session_absolute_s=3.0, session_idle_s=3600, session_cache_s=0.2)
    add_user(server, "ada")
    with browser(server) as client:
        sign_in(client, "ada")
        signed_in = time.monotonic()
        session_id = client.cookies["bastion_session"]
        while time.monotonic() - signed_in < 1.5:
            assert client.get("/api/v1/me").status_code == 200
            time.sleep(0.2)
    time.sleep(max(0.0, 3.3 - (time.monotonic() - signed_in)))
    # The browser drops the cookie at its Max-Age; the server refuses it even if replayed.
    with browser(server) as replay:
        replay.cookies.set("bastion_session", session_id)
        response = replay.get("/api/v1/me")
    assert response.status_code == 401
    assert "session has ended" in error(response)


def test_a_user_disabled_in_this_process_is_out_at_the_next_request(
    serve: ServerFactory,
) -> None:
    server = serve(session_cache_s=60)  # a long trust, to show the change does not wait for it
    add_user(server, "ada")
    with browser(server) as client:
        sign_in(client, "ada")
        assert client.get("/api/v1/me").status_code == 200
        with server.state.engine.begin() as conn:
            user = set_disabled(conn, "ada", True)
        server.app[SIGN_IN].sessions.forget_user(user.id)
        assert client.get("/api/v1/me").status_code == 401


def test_a_user_disabled_elsewhere_is_out_within_the_cache_bound(serve: ServerFactory) -> None:
    server = serve(session_cache_s=0.5)
    add_user(server, "ada")
    with browser(server) as client:
        sign_in(client, "ada")
        assert client.get("/api/v1/me").status_code == 200
        _elsewhere(server, lambda conn: set_disabled(conn, "ada", True))
        took = _wait_for(lambda: client.get("/api/v1/me").status_code == 401, within_s=2.0)
    assert took <= 1.0
    with server.state.engine.connect() as conn:
        assert conn.execute(sa.select(users.c.disabled)).scalar_one() is True


def test_a_role_changed_elsewhere_applies_within_the_cache_bound(serve: ServerFactory) -> None:
    server = serve(session_cache_s=0.5)
    add_user(server, "ada", "viewer")
    with browser(server) as client:
        token = {"X-CSRF-Token": sign_in(client, "ada")["csrf_token"]}
        assert client.get("/api/v1/keys", headers=token).status_code == 403
        _elsewhere(server, lambda conn: set_role(conn, "ada", PersonRole.ADMIN))
        _wait_for(lambda: client.get("/api/v1/keys").status_code == 200, within_s=2.0)


def test_another_tab_signing_out_ends_the_session_for_all_of_them(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    with browser(server) as first:
        token = sign_in(first, "ada")["csrf_token"]
        with browser(server) as second:
            second.cookies.set("bastion_session", first.cookies["bastion_session"])
            assert second.get("/api/v1/me").status_code == 200
            first.post("/auth/logout", headers={"X-CSRF-Token": token})
            assert second.get("/api/v1/me").status_code == 401


def test_key_requests_never_touch_the_session_store(serve: ServerFactory) -> None:
    server = serve()
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(server.state.engine, "before_cursor_execute", record)
    try:
        for _ in range(5):
            response = httpx.get(server.url + "/api/v1/me", headers=server.headers())
            assert response.status_code == 200
    finally:
        sa.event.remove(server.state.engine, "before_cursor_execute", record)
    # A known key is resolved from memory: no session, user or role is read for it. (The
    # server's own pollers, of routes and prompts, run on the same engine meanwhile.)
    tables = ("user_sessions", "users", "memberships", "login_attempts")
    assert not [s for s in statements if any(t in s for t in tables)]


def test_a_database_outage_is_a_503_naming_it(pg_outage: PgOutage, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=pg_outage.url, auth=AuthSettings(session_cache_s=0)
    )
    server, stop = start_live_server(settings)
    try:
        add_user(server, "ada")
        with browser(server) as client:
            sign_in(client, "ada")
            pg_outage.down()
            try:
                me = client.get("/api/v1/me")
                login = client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
            finally:
                pg_outage.up()
        assert me.status_code == 503
        assert "database is down" in error(me)
        assert login.status_code == 503
        assert "database is down" in error(login)
    finally:
        stop()
