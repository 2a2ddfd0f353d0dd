"""Nothing secret reaches the logs: passwords, session ids, CSRF tokens, the SSO client
secret, authorization codes, states or ID tokens, through every sign-in path, the server's
access log included."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiohttp import web

from bastion.auth import create_key
from bastion.server.access_log import RedactingAccessLogger, redact_url
from bastion.server.app import create_app
from bastion.server.threaded import serve_in_thread
from bastion.settings import AuthSettings, Settings
from bastion.store import migrate
from bastion.store.engine import create_engine
from tests.auth.oidc_issuer import CLIENT_ID, CLIENT_SECRET, Issuer, issuer
from tests.auth.support import PASSWORD, add_user, session_cookie
from tests.conftest import LiveServer

__all__ = ["issuer"]

WRONG = "a wrong but long password"


@pytest.fixture
def server(
    tmp_path: Path, db_url: str, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveServer]:
    """The server as ``bastion serve`` runs it: its access log on, through the redacting
    logger, single sign-on configured."""
    monkeypatch.setenv("TEST_OIDC_CLIENT_SECRET", CLIENT_SECRET)
    auth = AuthSettings(
        login_max_failures_per_user=2,
        oidc={
            "issuer": issuer.url,
            "client_id": CLIENT_ID,
            "client_secret_env": "TEST_OIDC_CLIENT_SECRET",
            "default_role": "member",
        },
    )
    settings = Settings(home=tmp_path / "home", database_url=db_url, auth=auth)
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        key = create_key(conn, "default").secret
    engine.dispose()
    app = create_app(settings)
    served = serve_in_thread(web.AppRunner(app, access_log_class=RedactingAccessLogger))
    try:
        yield LiveServer(served.url, key, settings, app)
    finally:
        served.stop()


def _sign_in_every_way(server: LiveServer, issuer: Issuer) -> set[str]:
    """Succeed, fail, get throttled, use and end sessions, sign in by SSO; the secrets seen."""
    secrets = {PASSWORD, WRONG, CLIENT_SECRET, server.admin_key}
    with httpx.Client(base_url=server.url) as client:
        signed_in = client.post("/auth/login", json={"name": "ada", "password": PASSWORD})
        secrets |= {session_cookie(signed_in) or "", signed_in.json()["csrf_token"]}
        client.post("/api/v1/prompts", json={}, headers={"X-CSRF-Token": "wrong-token-123"})
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {server.admin_key}"})
        client.post("/auth/logout", headers={"X-CSRF-Token": signed_in.json()["csrf_token"]})
        for _ in range(3):
            client.post("/auth/login", data={"name": "ada", "password": WRONG})
    issuer.person = {"email": "grace@example.com"}
    with httpx.Client(base_url=server.url) as client:
        start = client.get("/auth/oidc/login")
        query = parse_qs(urlsplit(start.headers["location"]).query)
        secrets |= {query["state"][0], query["nonce"][0], query["code_challenge"][0]}
        callback = httpx.get(start.headers["location"]).headers["location"]
        secrets.add(parse_qs(urlsplit(callback).query)["code"][0])
        done = client.get(callback)
        assert done.status_code == 303, done.text
        secrets.add(session_cookie(done) or "")
    return {s for s in secrets if s}


def test_no_secret_is_ever_logged(
    server: LiveServer, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(server, "ada")
    caplog.set_level(logging.DEBUG)
    secrets = _sign_in_every_way(server, issuer)

    def server_log() -> str:
        # Everything the server logged (the test's own HTTP client logs what it sends).
        return "\n".join(
            f"{record.name} {record.getMessage()} {record.exc_text or ''}"
            for record in caplog.records
            if not record.name.startswith(("httpx", "httpcore"))
        )

    deadline = time.monotonic() + 10
    while "/auth/oidc/callback" not in server_log():  # written once the answer is sent
        assert time.monotonic() < deadline
        time.sleep(0.05)
    logged = server_log()
    # The events are there (so the check is not vacuous), the secrets are not.
    for event in ("login.succeeded", "login.failed", "login.throttled", "logout"):
        assert event in logged
    assert "/auth/oidc/callback?code=redacted&state=redacted" in logged
    for secret in secrets:
        assert secret not in logged, "a secret reached the log"


def test_redaction_keeps_the_rest_of_the_line() -> None:
    line = 'GET /auth/oidc/callback?code=abc&state=def&x=1 HTTP/1.1" 303 "/p?token=t&keep=k"'
    assert redact_url(line) == (
        'GET /auth/oidc/callback?code=redacted&state=redacted&x=1 HTTP/1.1" 303 '
        '"/p?token=redacted&keep=k"'
    )
