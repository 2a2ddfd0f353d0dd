"""Signing in and out over real HTTP: cookies, fixation, open redirects, cross-site sign-in."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import sqlalchemy as sa

from bastion.store.schema import login_attempts, user_sessions
from tests.auth.support import (
    PASSWORD,
    ServerFactory,
    add_user,
    browser,
    error,
    session_cookie,
    sign_in,
)


def test_json_sign_in_sets_a_safe_cookie_and_me_answers(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada", "admin", more={"research": "viewer"})
    with browser(server) as client:
        response = client.post("/auth/login", json={"name": "Ada", "password": PASSWORD})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user"]["name"] == "ada"
        assert body["next"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("bastion_session=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age", "samesite"} <= attributes
        assert "samesite=lax" in cookie.lower()
        assert "secure" not in attributes  # plain HTTP on loopback, no setting
        me = client.get("/api/v1/me").json()
    assert me["kind"] == "user"
    assert me["user"]["name"] == "ada"
    assert me["project"] == "default"
    assert me["role"] == "admin"
    assert me["projects"] == [
        {"project": "default", "role": "admin"},
        {"project": "research", "role": "viewer"},
    ]
    assert me["csrf_token"] == body["csrf_token"]


def test_the_database_keeps_only_digests(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    with browser(server) as client:
        response = client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        session_id = session_cookie(response)
        csrf = response.json()["csrf_token"]
    assert session_id
    with server.state.engine.connect() as conn:
        rows = [tuple(str(v) for v in row) for row in conn.execute(sa.select(user_sessions))]
    assert len(rows) == 1
    stored = " ".join(rows[0])
    assert session_id not in stored
    assert csrf not in stored
    assert hashlib.sha256(session_id.encode()).hexdigest() in stored
    assert hashlib.sha256(csrf.encode()).hexdigest() in stored


def test_cookie_is_secure_when_the_setting_says_so(serve: ServerFactory) -> None:
    server = serve(cookie_secure=True)
    add_user(server, "ada")
    response = httpx.post(server.url + "/auth/login", json={"name": "ada", "password": PASSWORD})
    assert response.status_code == 200
    assert "; secure" in response.headers["set-cookie"].lower()


def test_wrong_unknown_and_disabled_get_the_same_answer(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    add_user(server, "grace")
    from bastion.auth.users import set_disabled

    with server.state.engine.begin() as conn:
        set_disabled(conn, "grace", True)
    answers = set()
    for name, password in (("ada", "wrong wrong wrong"), ("nobody", PASSWORD), ("grace", PASSWORD)):
        response = httpx.post(server.url + "/auth/login", json={"name": name, "password": password})
        assert response.status_code == 401
        assert session_cookie(response) is None
        answers.add(error(response))
    assert answers == {"invalid user name or password"}
    with server.state.engine.connect() as conn:
        outcomes = conn.execute(sa.select(login_attempts.c.succeeded)).scalars().all()
    assert outcomes == [False, False, False]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "ada"},
        {"password": PASSWORD},
        {"name": "", "password": PASSWORD},
        {"name": "ada", "password": PASSWORD, "extra": 1},
        {"name": "ada\u0000", "password": PASSWORD},
        {"name": "ada", "password": "x" * 1025},
    ],
)
def test_malformed_sign_ins_are_400(serve: ServerFactory, body: dict[str, object]) -> None:
    server = serve()
    response = httpx.post(server.url + "/auth/login", json=body)
    assert response.status_code == 400, response.text
    assert error(response).startswith("invalid body")


def test_form_sign_in_redirects_to_next(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    with browser(server) as client:
        response = client.post(
            "/auth/login",
            data={"name": "ada", "password": PASSWORD, "next": "/traces?model=sim-small#top"},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/traces?model=sim-small#top"
        assert session_cookie(response)
        assert client.get("/api/v1/me").status_code == 200


@pytest.mark.parametrize(
    "next_value",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "http:/evil.example",
        "/%0a/evil",  # fine: percent-encoded stays a path
        "",
        "/" + "a" * 3000,
        "/caf\u00e9",
    ],
)
def test_next_never_leaves_the_server(serve: ServerFactory, next_value: str) -> None:
    server = serve()
    add_user(server, "ada")
    response = httpx.post(
        server.url + "/auth/login",
        data={"name": "ada", "password": PASSWORD, "next": next_value},
    )
    location = response.headers.get("location")
    if response.status_code == 400:  # over the field's length
        assert len(next_value) > 2000
        return
    assert response.status_code == 303
    expected = next_value if next_value == "/%0a/evil" else "/"
    assert location == expected
    assert location.startswith("/")
    assert not location.startswith("//")


def test_a_session_id_presented_before_sign_in_is_never_adopted(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    planted = "attacker-chosen-session-id-0123456789abcdef"
    with browser(server) as client:
        client.cookies.set("bastion_session", planted)
        response = client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        issued = session_cookie(response)
    assert issued
    assert issued != planted
    with browser(server) as attacker:
        attacker.cookies.set("bastion_session", planted)
        response = attacker.get("/api/v1/me")
    assert response.status_code == 401
    assert "session has ended" in error(response)


def test_each_sign_in_gets_a_new_id_and_ends_the_one_it_replaces(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    with browser(server) as client:
        first = session_cookie(
            client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        )
        second = session_cookie(
            client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        )
        assert client.get("/api/v1/me").status_code == 200
    assert first
    assert second
    assert first != second
    with browser(server) as old:
        old.cookies.set("bastion_session", first)
        assert old.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1"])
def test_a_sign_in_from_another_site_is_refused(serve: ServerFactory, origin: str) -> None:
    server = serve()
    add_user(server, "ada")
    response = httpx.post(
        server.url + "/auth/login",
        data={"name": "ada", "password": PASSWORD},
        headers={"Origin": origin},
    )
    assert response.status_code == 403
    assert "cross-site sign-in refused" in error(response)
    assert session_cookie(response) is None
    same_site = httpx.post(
        server.url + "/auth/login",
        json={"name": "ada", "password": PASSWORD},
        headers={"Origin": server.url},
    )
    assert same_site.status_code == 200


def test_sign_out_ends_the_session_on_the_server(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    with browser(server) as client:
        token = sign_in(client, "ada")["csrf_token"]
        session_id = client.cookies["bastion_session"]
        refused = client.post("/auth/logout")
        assert refused.status_code == 403  # sign-out needs the token too
        response = client.post("/auth/logout", headers={"X-CSRF-Token": token})
        assert response.status_code == 200
        assert response.json() == {"signed_out": True}
        assert 'bastion_session=""' in response.headers["set-cookie"]
        again = client.post("/auth/logout")
        assert again.json() == {"signed_out": False}
    # The old id is dead on the server, not only forgotten by the browser.
    with browser(server) as replay:
        replay.cookies.set("bastion_session", session_id)
        response = replay.get("/api/v1/me")
    assert response.status_code == 401
    with server.state.engine.connect() as conn:
        revoked = conn.execute(sa.select(user_sessions.c.revoked_at)).scalar_one()
    assert revoked is not None


def test_form_sign_out_takes_the_token_as_a_field(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada")
    with browser(server) as client:
        token = sign_in(client, "ada")["csrf_token"]
        wrong = client.post("/auth/logout", data={"csrf_token": "nope", "next": "/bye"})
        assert wrong.status_code == 403
        response = client.post("/auth/logout", data={"csrf_token": token, "next": "//evil"})
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        assert client.get("/api/v1/me").status_code == 401


def test_me_for_a_key_and_for_nobody(serve: ServerFactory) -> None:
    server = serve()
    response = httpx.get(server.url + "/api/v1/me", headers=server.headers())
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "key"
    assert body["role"] == "admin"
    assert body["csrf_token"] is None
    nobody = httpx.get(server.url + "/api/v1/me")
    assert nobody.status_code == 401
    assert "missing API key" in error(nobody)
    bad_key = httpx.get(server.url + "/api/v1/me", headers={"Authorization": "Bearer bst_nope"})
    assert bad_key.status_code == 401
