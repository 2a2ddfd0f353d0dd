"""Sign-ins in the audit log, on SQLite and PostgreSQL: success and sign-out by the person,
failures and throttling by ``system:sign-in`` with the name tried as the object, single
sign-on with the user it creates and the roles it maps; never a password, session id or
CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.store.schema import audit_log, user_sessions
from tests.auth.oidc_issuer import CLIENT_SECRET, Issuer, issuer
from tests.auth.support import PASSWORD, ServerFactory, add_user, browser, session_cookie
from tests.auth.test_oidc import ADA, SECRET_ENV, oidc, sso
from tests.conftest import LiveServer

__all__ = ["issuer"]


@pytest.fixture(autouse=True)
def _client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)


def records(server: LiveServer) -> list[Any]:
    with server.state.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all())


def test_password_sign_ins_and_sign_outs_are_audited_without_secrets(
    serve: ServerFactory,
) -> None:
    server = serve(login_max_failures_per_user=2)
    add_user(server, "ada", "member")
    cookies, tokens = [], []
    with browser(server) as client:
        response = client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        cookies.append(session_cookie(response))
        token = response.json()["csrf_token"]
        tokens.append(token)
        assert client.post("/auth/logout", headers={"X-CSRF-Token": token}).status_code == 200
    wrong = {"name": "ada", "password": "not the password at all"}
    with browser(server) as client:
        assert (
            client.post(
                "/auth/login", json={"name": "nobody-here", "password": "x" * 12}
            ).status_code
            == 401
        )
        for _ in range(2):
            assert client.post("/auth/login", json=wrong).status_code == 401
        assert client.post("/auth/login", json=wrong).status_code == 429
    rows = records(server)
    seen = [(r.actor, r.action, r.object_id, r.reason) for r in rows]
    assert seen == [
        ("user:ada", "auth.login.succeeded", "ada", None),
        ("user:ada", "auth.logout", "ada", None),
        ("system:sign-in", "auth.login.failed", "nobody-here", "no such user, or no password set"),
        ("system:sign-in", "auth.login.failed", "ada", "wrong password"),
        ("system:sign-in", "auth.login.failed", "ada", "wrong password"),
        ("system:sign-in", "auth.login.throttled", "ada", seen[-1][3]),
    ]
    assert "too many failures" in str(seen[-1][3])
    details = orjson.loads(rows[0].details)
    assert details == {"method": "password", "client_addr": "127.0.0.1"}
    assert all(r.request_id for r in rows)
    stored = "\n".join(str(tuple(r)) for r in rows)
    for secret in (PASSWORD, "not the password at all", *cookies, *tokens):
        assert secret
        assert secret not in stored


def test_single_sign_on_records_the_user_it_creates_and_the_roles_it_maps(
    serve: ServerFactory, issuer: Issuer
) -> None:
    server = serve(oidc=oidc(issuer))
    issuer.person = dict(ADA)
    with browser(server) as client:
        assert sso(client).status_code == 303
    issuer.person = {**ADA, "groups": ["bastion-viewers"]}
    with browser(server) as client:
        assert sso(client).status_code == 303
    issuer.person = {**ADA, "email": "eve@evil.example"}
    with browser(server) as client:
        assert sso(client).status_code == 403
    seen = [(r.actor, r.action, r.object_id) for r in records(server)]
    user_id = seen[0][2]
    assert seen == [
        ("system:oidc", "user.create", user_id),  # admin in default, as mapped
        ("system:oidc", "user.set_role", user_id),  # member in research
        ("user:ada@example.com", "auth.login.succeeded", "ada@example.com"),
        ("system:oidc", "user.set_role", user_id),  # viewer in default now
        ("user:ada@example.com", "auth.login.succeeded", "ada@example.com"),
        ("system:sign-in", "auth.login.failed", "(single sign-on)"),
    ]


def test_a_sign_in_that_cannot_be_audited_does_not_happen(serve: ServerFactory) -> None:
    server = serve()
    add_user(server, "ada", "member")
    with server.state.engine.begin() as conn:  # a broken chain: records exist, the head does not
        conn.execute(
            audit_log.insert().values(
                seq=1,
                at=datetime.now(UTC),
                actor="system:test",
                action="test.seed",
                object_type="t",
                object_id="1",
                prev_hash="0" * 64,
                hash="0" * 64,
                hash_mode="sha256",
            )
        )
    with browser(server) as client:
        response = client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        assert response.status_code == 500
        assert session_cookie(response) is None
        assert client.get("/api/v1/me").status_code == 401
    with server.state.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(user_sessions)).scalar() == 0
