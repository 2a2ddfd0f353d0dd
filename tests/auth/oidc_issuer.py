"""A small OpenID Connect issuer on loopback for the single sign-on tests.

It serves a discovery document, its JWKS, an authorize endpoint that signs in whoever the test
says (``issuer.person``) and redirects back with a code, and a token endpoint that checks the
client's secret, the redirect URI and the PKCE verifier before issuing an RS256 ID token.
``issuer.tamper`` makes it issue a token that is wrong in one way.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from bastion.server.threaded import serve_in_thread

CLIENT_ID = "bastion-tests"
CLIENT_SECRET = "s3cret-client-value-for-tests-only"


def rsa_key(kid: str) -> RSAKey:
    """A fresh 2048-bit RSA key made with ``cryptography``."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return RSAKey.import_key(pem, {"kid": kid, "use": "sig", "alg": "RS256"})


@dataclass
class Issuer:
    """The issuer's state, read and changed by the tests."""

    url: str = ""
    key: RSAKey = field(default_factory=lambda: rsa_key("key-1"))
    person: dict[str, Any] = field(default_factory=dict)
    tamper: str | None = None
    discovery_issuer: str | None = None  # what the discovery document claims to be
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def claims(self, grant: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": "subject-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            **self.person,
        }
        if self.tamper == "wrong_audience":
            claims["aud"] = "some-other-client"
        elif self.tamper == "expired":
            claims["iat"], claims["exp"] = now - 3600, now - 1800
        elif self.tamper == "wrong_issuer":
            claims["iss"] = "https://impostor.example"
        elif self.tamper == "wrong_nonce":
            claims["nonce"] = "a-nonce-from-another-sign-in"
        return claims

    def id_token(self, grant: dict[str, Any]) -> str:
        header = {"alg": "RS256", "kid": self.key.kid}
        if self.tamper == "bad_signature":
            # Signed by another key under the published key's id.
            return jwt.encode(header, self.claims(grant), rsa_key(str(self.key.kid)))
        if self.tamper == "alg_none":
            payload = jwt.encode(header, self.claims(grant), self.key).split(".")[1]
            none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
            return f"{none_header}.{payload}."
        return jwt.encode(header, self.claims(grant), self.key)


def _app(issuer: Issuer) -> web.Application:
    async def discovery(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer.discovery_issuer or issuer.url,
                "authorization_endpoint": issuer.url + "/authorize",
                "token_endpoint": issuer.url + "/token",
                "jwks_uri": issuer.url + "/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response({"keys": [issuer.key.as_dict(private=False)]})

    async def authorize(request: web.Request) -> web.Response:
        query = request.query
        assert query["client_id"] == CLIENT_ID
        assert query["response_type"] == "code"
        assert query["code_challenge_method"] == "S256"
        assert "openid" in query["scope"].split()
        code = secrets.token_urlsafe(16)
        issuer.codes[code] = {
            "nonce": query["nonce"],
            "challenge": query["code_challenge"],
            "redirect_uri": query["redirect_uri"],
        }
        target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        return web.Response(status=302, headers={"Location": target})

    async def token(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        issuer.token_requests.append(form)
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = issuer.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != grant["redirect_uri"]
            or challenge != grant["challenge"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "id_token": issuer.id_token(grant),
            }
        )

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    return app


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    """The issuer, running on a loopback port in a background thread."""
    state = Issuer()
    served = serve_in_thread(web.AppRunner(_app(state), access_log=None))
    state.url = served.url
    try:
        yield state
    finally:
        served.stop()
