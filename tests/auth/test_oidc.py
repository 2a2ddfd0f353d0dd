"""Single sign-on against a real OpenID Connect issuer on loopback: the code flow with PKCE,
just-in-time users and roles, and every bad token refused with no user created."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from bastion.server.app import create_app
from bastion.settings import ConfigError, Settings
from bastion.store.schema import memberships, users
from tests.auth.oidc_issuer import CLIENT_ID, CLIENT_SECRET, Issuer, issuer
from tests.auth.support import PASSWORD, ServerFactory, add_user, browser, error, session_cookie
from tests.conftest import LiveServer

__all__ = ["issuer"]

SECRET_ENV = "TEST_OIDC_CLIENT_SECRET"
ADA = {"email": "Ada@Example.com", "email_verified": True, "groups": ["bastion-admins", "ops"]}


@pytest.fixture(autouse=True)
def _client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)


def oidc(issuer: Issuer, **overrides: Any) -> dict[str, Any]:
    return {
        "issuer": issuer.url,
        "client_id": CLIENT_ID,
        "client_secret_env": SECRET_ENV,
        "allowed_domains": ["example.com"],
        "role_mapping": {
            "bastion-admins": "admin",
            "bastion-viewers": "viewer",
            "ops": "research:member",
        },
        **overrides,
    }


def sso(client: httpx.Client, next_path: str = "/") -> httpx.Response:
    """The browser's round trip: to the issuer, signed in there, back to the callback."""
    start = client.get("/auth/oidc/login", params={"next": next_path})
    assert start.status_code == 302, start.text
    at_issuer = httpx.get(start.headers["location"])
    assert at_issuer.status_code == 302, at_issuer.text
    return client.get(at_issuer.headers["location"])


def _users(server: LiveServer) -> list[Any]:
    with server.state.engine.connect() as conn:
        return list(conn.execute(sa.select(users)).all())


def test_sign_in_creates_the_user_with_mapped_roles(serve: ServerFactory, issuer: Issuer) -> None:
    server = serve(oidc=oidc(issuer))
    issuer.person = dict(ADA)
    with browser(server) as client:
        start = client.get("/auth/oidc/login", params={"next": "/traces"})
        location = urlsplit(start.headers["location"])
        query = {k: v[0] for k, v in parse_qs(location.query).items()}
        assert f"{location.scheme}://{location.netloc}" == issuer.url
        assert query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43
        assert query["state"]
        assert query["nonce"]
        assert query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == server.url + "/auth/oidc/callback"
        assert "httponly" in start.headers["set-cookie"].lower()
        client.cookies.clear()
        response = sso(client, "/traces")
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/traces"
        assert session_cookie(response)
        me = client.get("/api/v1/me").json()
    assert me["user"]["name"] == "ada@example.com"
    assert me["projects"] == [
        {"project": "default", "role": "admin"},
        {"project": "research", "role": "member"},
    ]
    # The token request proved possession of the PKCE verifier.
    assert len(issuer.token_requests[-1]["code_verifier"]) >= 43
    [row] = _users(server)
    assert row.password_hash is None
    assert (row.oidc_issuer, row.oidc_subject) == (issuer.url, "subject-1")


def test_a_second_sign_in_is_the_same_user_with_roles_from_the_claims(
    serve: ServerFactory, issuer: Issuer
) -> None:
    server = serve(oidc=oidc(issuer))
    issuer.person = dict(ADA)
    with browser(server) as client:
        assert sso(client).status_code == 303
    issuer.person = {**ADA, "groups": ["bastion-viewers"], "email": "renamed@example.com"}
    with browser(server) as client:
        assert sso(client).status_code == 303
        me = client.get("/api/v1/me").json()
    assert me["user"]["name"] == "ada@example.com"  # found by subject, not by e-mail
    assert {"project": "default", "role": "viewer"} in me["projects"]
    assert len(_users(server)) == 1


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("wrong_audience", "meant for another client"),
        ("expired", "has expired"),
        ("bad_signature", "signature does not verify"),
        ("wrong_issuer", "issued by another issuer"),
        ("wrong_nonce", "nonce"),
        ("alg_none", "not signed with an algorithm this server accepts"),
    ],
)
def test_bad_id_tokens_are_refused_and_create_nothing(
    serve: ServerFactory, issuer: Issuer, tamper: str, message: str
) -> None:
    server = serve(oidc=oidc(issuer))
    issuer.person = dict(ADA)
    issuer.tamper = tamper
    with browser(server) as client:
        response = sso(client)
        assert response.status_code == 401, response.text
        assert message in error(response)
        assert session_cookie(response) is None
        assert client.get("/api/v1/me").status_code == 401
    assert _users(server) == []


@pytest.mark.parametrize(
    ("person", "overrides", "message"),
    [
        ({**ADA, "email": "ada@evil.example"}, {}, "'evil.example' may not sign in"),
        ({**ADA, "email_verified": False}, {}, "not verified"),
        ({k: v for k, v in ADA.items() if k != "email"}, {}, "carries none"),
        ({**ADA, "groups": ["strangers"]}, {}, "maps to none"),
        (ADA, {"create_users": False}, "not created"),
    ],
)
def test_people_who_may_not_sign_in_are_refused(
    serve: ServerFactory,
    issuer: Issuer,
    person: dict[str, Any],
    overrides: dict[str, Any],
    message: str,
) -> None:
    server = serve(oidc=oidc(issuer, **overrides))
    issuer.person = person
    with browser(server) as client:
        response = sso(client)
    assert response.status_code == 403, response.text
    assert message in error(response)
    assert _users(server) == []


def test_a_default_role_admits_people_no_mapping_names(
    serve: ServerFactory, issuer: Issuer
) -> None:
    server = serve(oidc=oidc(issuer, default_role="viewer", allowed_domains=[]))
    issuer.person = {"email": "guest@anywhere.example", "groups": "nothing-mapped"}
    with browser(server) as client:
        assert sso(client).status_code == 303
        me = client.get("/api/v1/me").json()
    assert me["projects"] == [{"project": "default", "role": "viewer"}]


def test_sso_never_takes_over_an_existing_account(serve: ServerFactory, issuer: Issuer) -> None:
    server = serve(oidc=oidc(issuer))
    add_user(server, "ada@example.com", "viewer")
    issuer.person = dict(ADA)
    with browser(server) as client:
        response = sso(client)
        assert response.status_code == 403
        assert "already exists and is not linked" in error(response)
    [row] = _users(server)
    assert row.oidc_subject is None
    with server.state.engine.connect() as conn:
        roles = conn.execute(sa.select(memberships.c.role)).scalars().all()
    assert roles == ["viewer"]  # the mapping's admin role was not given to the local account
    with browser(server) as client:  # the local account still signs in with its password
        ok = client.post("/auth/login", json={"name": "ada@example.com", "password": PASSWORD})
        assert ok.status_code == 200


def test_forged_callbacks_are_refused(serve: ServerFactory, issuer: Issuer) -> None:
    server = serve(oidc=oidc(issuer))
    issuer.person = dict(ADA)
    with browser(server) as client:
        no_cookie = client.get("/auth/oidc/callback", params={"code": "x", "state": "y"})
        assert no_cookie.status_code == 400
        assert "no sign-in in progress" in error(no_cookie)
        start = client.get("/auth/oidc/login")
        at_issuer = httpx.get(start.headers["location"])
        callback = urlsplit(at_issuer.headers["location"])
        code = parse_qs(callback.query)["code"][0]
        wrong_state = client.get("/auth/oidc/callback", params={"code": code, "state": "other"})
        assert wrong_state.status_code == 400
        assert "state does not match" in error(wrong_state)
        sealed = client.cookies["bastion_oidc"]
        client.cookies.set("bastion_oidc", "x" + sealed[1:], path="/auth/oidc")
        altered = client.get(at_issuer.headers["location"])
        assert altered.status_code == 400
        assert "cookie" in error(altered)
    assert _users(server) == []


def test_the_issuer_comes_from_configuration_only(serve: ServerFactory, issuer: Issuer) -> None:
    server = serve(oidc=oidc(issuer))
    with browser(server) as client:
        start = client.get(
            "/auth/oidc/login",
            params={"issuer": "http://127.0.0.2:1", "next": "https://evil.example"},
        )
        assert start.status_code == 302
        assert start.headers["location"].startswith(issuer.url + "/authorize?")
        issuer.person = dict(ADA)
        at_issuer = httpx.get(start.headers["location"])
        done = client.get(at_issuer.headers["location"])
        assert done.headers["location"] == "/"  # next was not a local path


def test_a_discovery_document_naming_another_issuer_is_refused(
    serve: ServerFactory, issuer: Issuer
) -> None:
    issuer.discovery_issuer = "https://impostor.example"
    server = serve(oidc=oidc(issuer))
    response = httpx.get(server.url + "/auth/oidc/login")
    assert response.status_code == 502
    assert "not the configured" in error(response)


def test_sso_routes_are_absent_until_configured(serve: ServerFactory) -> None:
    server = serve()
    response = httpx.get(server.url + "/auth/oidc/login")
    assert response.status_code == 404
    assert "not configured" in error(response)


def test_a_missing_client_secret_stops_the_start(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    configured = settings.model_copy(update={"auth": settings.auth.model_copy(update={})})
    configured.auth.oidc = configured.auth.oidc.model_validate(oidc(issuer))
    with pytest.raises(ConfigError, match=SECRET_ENV):
        create_app(configured)


def test_settings_refuse_an_issuer_over_plain_http_elsewhere() -> None:
    with pytest.raises(ValueError, match="https"):
        Settings(auth={"oidc": {"issuer": "http://idp.example.com"}})
    with pytest.raises(ValueError, match="role must be one of"):
        Settings(auth={"oidc": {"role_mapping": {"g": "superuser"}}})
