"""A signed-in browser: the CSRF token on every change, roles mapped onto actions, and the
project a request acts in."""

from __future__ import annotations

import httpx
import pytest

from tests.auth.support import ServerFactory, add_user, browser, error, sign_in

PROMPT = {
    "prompts": [{"name": "greeting", "text": "Hello {{ name }}", "variables": {"name": "string"}}]
}


def test_changes_need_the_sessions_csrf_token(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada", "member")
    add_user(server, "grace", "member")
    with browser(server) as other:
        others_token = sign_in(other, "grace")["csrf_token"]
    with browser(server) as client:
        token = sign_in(client, "ada")["csrf_token"]
        assert client.get("/api/v1/traces").status_code == 200  # reads need none
        missing = client.post("/api/v1/prompts", json=PROMPT)
        assert missing.status_code == 403
        assert "missing CSRF token" in error(missing)
        assert "X-CSRF-Token" in error(missing)
        for wrong in ("nope", token[:-1], others_token, token.upper()):
            response = client.post("/api/v1/prompts", json=PROMPT, headers={"X-CSRF-Token": wrong})
            assert response.status_code == 403
            assert "invalid CSRF token" in error(response)
        for method in ("PUT", "DELETE", "PATCH"):
            response = client.request(method, "/api/v1/prompts/greeting/labels/production")
            assert response.status_code in (403, 405), (method, response.text)
            if response.status_code == 403:
                assert "CSRF" in error(response)
        done = client.post("/api/v1/prompts", json=PROMPT, headers={"X-CSRF-Token": token})
        assert done.status_code == 201, done.text
        assert done.json()["results"][0]["status"] == "created"


def test_the_change_is_recorded_as_the_person(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada", "member")
    with browser(server) as client:
        token = sign_in(client, "ada")["csrf_token"]
        client.post("/api/v1/prompts", json=PROMPT, headers={"X-CSRF-Token": token})
        response = client.put(
            "/api/v1/prompts/greeting/labels/production",
            json={"version": 1},
            headers={"X-CSRF-Token": token},
        )
        assert response.status_code == 200, response.text
        history = client.get("/api/v1/prompts/greeting/log")
    assert history.status_code == 200, history.text
    assert "user:ada" in history.text


def test_api_keys_need_no_csrf_token(serve: ServerFactory) -> None:
    server = serve()
    response = httpx.post(server.url + "/api/v1/prompts", json=PROMPT, headers=server.headers())
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("role", "can_read", "can_write", "can_admin"),
    [
        ("owner", True, True, True),
        ("admin", True, True, True),
        ("member", True, True, False),
        ("viewer", True, False, False),
    ],
)
def test_roles_map_onto_actions(
    serve: ServerFactory, role: str, can_read: bool, can_write: bool, can_admin: bool
) -> None:
    server = serve()
    add_user(server, "ada", role)
    with browser(server) as client:
        token = {"X-CSRF-Token": sign_in(client, "ada")["csrf_token"]}
        read = client.get("/api/v1/traces")
        write = client.post("/api/v1/prompts", json=PROMPT, headers=token)
        admin = client.get("/api/v1/keys")
    assert (read.status_code == 200) is can_read
    assert (write.status_code == 201) is can_write, write.text
    assert (admin.status_code == 200) is can_admin, admin.text
    for response, allowed in ((write, can_write), (admin, can_admin)):
        if not allowed:
            assert response.status_code == 403
            assert f"has the role {role!r} in project 'default'" in error(response)


def test_the_project_comes_from_the_header_or_the_first_role(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada", "viewer", more={"research": "admin"})
    add_user(server, "nobody-anywhere", "viewer", project="scratch")
    with server.state.engine.begin() as conn:
        from bastion.store.schema import memberships

        conn.execute(memberships.delete().where(memberships.c.user_id == 2))
    with browser(server) as client:
        token = {"X-CSRF-Token": sign_in(client, "ada")["csrf_token"]}
        # The first project (default): a viewer there.
        assert client.post("/api/v1/prompts", json=PROMPT, headers=token).status_code == 403
        research = {**token, "X-Bastion-Project": "research"}
        created = client.post("/api/v1/prompts", json=PROMPT, headers=research)
        assert created.status_code == 201, created.text
        assert client.get("/api/v1/keys", headers=research).status_code == 200
        me = client.get("/api/v1/me", headers={"X-Bastion-Project": "research"}).json()
        assert (me["project"], me["role"]) == ("research", "admin")
        elsewhere = client.get("/api/v1/traces", headers={"X-Bastion-Project": "secret"})
        assert elsewhere.status_code == 403
        assert "no role in project 'secret'" in error(elsewhere)
        # The prompt went to research only.
        listed = client.get("/api/v1/prompts").json()
        assert listed["items"] == []
    with browser(server) as client:
        sign_in(client, "nobody-anywhere")
        response = client.get("/api/v1/traces")
        assert response.status_code == 403
        assert "no role in any project" in error(response)
        me = client.get("/api/v1/me").json()
        assert me["projects"] == []
        assert me["project"] is None
