"""Single sign-on with an OpenID Connect issuer: the authorization code flow with PKCE.

The issuer is the configured one and nothing else (no request chooses where the server
connects). Its discovery document must name that same issuer, and its endpoints must use
https (http only for an issuer on a loopback address). The ID token is accepted only when
its signature verifies against the issuer's published keys (asymmetric algorithms only) and
its issuer, audience, expiry and nonce are right. The protocol pieces (authorization URL,
token request, PKCE challenge, ID token claims) are authlib's; signatures are checked with
joserfc, which authlib builds on.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit

import aiohttp
import orjson
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    DecodeError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    MissingAlgorithmError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet

from bastion.auth.oidc_pending import PendingSignIn
from bastion.settings import OidcSettings

__all__ = ["OidcClient", "OidcError"]

# Signatures by the issuer's private key only: never "none", never a shared secret.
_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_RESPONSE_BYTES = 1 << 20
_METADATA_TTL_S = 3600.0
_JWKS_REFRESH_MIN_S = 60.0  # an unknown key id refetches the keys at most this often
_CLOCK_LEEWAY_S = 60


class OidcError(Exception):
    """A sign-in that cannot go on; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Metadata:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


class OidcClient:
    """Talks to the configured issuer; one per server process."""

    def __init__(self, settings: OidcSettings, client_secret: str) -> None:
        if not settings.issuer:
            raise ValueError("single sign-on needs auth.oidc.issuer")
        if not settings.client_id:
            raise ValueError("single sign-on needs auth.oidc.client_id")
        if "openid" not in settings.scopes:
            raise ValueError("auth.oidc.scopes must include openid")
        self.settings = settings
        self.issuer: str = settings.issuer
        self.client_secret = client_secret
        self._metadata: _Metadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the secret
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.settings.client_id!r})"

    # -- the issuer's documents ------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url, allow_redirects=False) as response,
            ):
                raw = await response.content.read(_MAX_RESPONSE_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(f"cannot read the issuer's {what}: {type(exc).__name__}", 502) from exc
        return _json_object(raw, status, what)

    def _check_endpoint(self, url: object, name: str) -> str:
        if not isinstance(url, str):
            raise OidcError(f"the issuer's discovery document has no {name}", 502)
        parts = urlsplit(url)
        insecure_ok = urlsplit(self.issuer).scheme == "http" and parts.hostname in _LOOPBACK
        if parts.scheme != "https" and not (parts.scheme == "http" and insecure_ok):
            raise OidcError(f"the issuer's {name} {url!r} does not use https", 502)
        return url

    async def metadata(self) -> _Metadata:
        """The issuer's endpoints, from its discovery document (re-read hourly)."""
        if self._metadata is not None and time.monotonic() - self._metadata_at < _METADATA_TTL_S:
            return self._metadata
        doc = await self._get_json(
            f"{self.issuer}/.well-known/openid-configuration", "discovery document"
        )
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
            raise OidcError(
                f"the discovery document names issuer {doc.get('issuer')!r}, not the "
                f"configured {self.issuer!r}",
                502,
            )
        offered = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(a for a in _ALGORITHMS if a in offered)
        if not algorithms:
            raise OidcError(f"the issuer signs ID tokens only with {offered!r}", 502)
        self._metadata = _Metadata(
            authorization_endpoint=self._check_endpoint(
                doc.get("authorization_endpoint"), "authorization_endpoint"
            ),
            token_endpoint=self._check_endpoint(doc.get("token_endpoint"), "token_endpoint"),
            jwks_uri=self._check_endpoint(doc.get("jwks_uri"), "jwks_uri"),
            algorithms=algorithms,
        )
        self._metadata_at = time.monotonic()
        return self._metadata

    async def _key_set(self, *, refresh: bool = False) -> KeySet:
        async with self._lock:
            fresh = time.monotonic() - self._keys_at < _JWKS_REFRESH_MIN_S
            if self._keys is not None and (not refresh or fresh):
                return self._keys
            doc = await self._get_json((await self.metadata()).jwks_uri, "signing keys (JWKS)")
            try:
                self._keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise OidcError(f"the issuer's signing keys cannot be read: {exc}", 502) from exc
            self._keys_at = time.monotonic()
            return self._keys

    # -- the flow ----------------------------------------------------------------------------

    async def start(self, redirect_uri: str, next_path: str) -> tuple[str, PendingSignIn]:
        """The issuer's authorization URL to send the browser to, and what to remember."""
        metadata = await self.metadata()
        pending = PendingSignIn(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),
            next_path=next_path,
            redirect_uri=redirect_uri,
            started_at=time.time(),
        )
        url = prepare_grant_uri(
            metadata.authorization_endpoint,
            self.settings.client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=" ".join(self.settings.scopes),
            state=pending.state,
            nonce=pending.nonce,
            code_challenge=create_s256_code_challenge(pending.code_verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
        )
        return str(url), pending

    async def finish(self, pending: PendingSignIn, code: str) -> dict[str, Any]:
        """Exchange ``code`` (with the PKCE verifier) and return the ID token's checked claims."""
        metadata = await self.metadata()
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
        )
        token = await self._post_token(metadata.token_endpoint, str(body))
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the issuer's token response has no ID token", 502)
        access_token = token.get("access_token")
        return await self._claims(
            id_token, pending.nonce, access_token if isinstance(access_token, str) else None
        )

    async def _post_token(self, url: str, body: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        headers = {
            "Authorization": _client_secret_basic(self.settings.client_id, self.client_secret),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, data=body, headers=headers, allow_redirects=False) as r,
            ):
                raw = await r.content.read(_MAX_RESPONSE_BYTES + 1)
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(
                f"cannot reach the issuer's token endpoint: {type(exc).__name__}", 502
            ) from exc
        if status == 400:
            error = _json_object(raw, 200, "token error").get("error", "invalid_grant")
            raise OidcError(f"the issuer refused the authorization code: {str(error)[:100]}")
        return _json_object(raw, status, "token response")

    async def _claims(self, id_token: str, nonce: str, access_token: str | None) -> dict[str, Any]:
        metadata = await self.metadata()
        try:
            try:
                decoded = jwt.decode(
                    id_token, await self._key_set(), algorithms=metadata.algorithms
                )
            except InvalidKeyIdError:  # the issuer rotated its keys
                keys = await self._key_set(refresh=True)
                decoded = jwt.decode(id_token, keys, algorithms=metadata.algorithms)
            options: dict[str, Any] = {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.settings.client_id},
            }
            params = {"nonce": nonce, "client_id": self.settings.client_id}
            if access_token:
                params["access_token"] = access_token
            claims = CodeIDToken(decoded.claims, decoded.header, options, params)
            claims.validate(leeway=_CLOCK_LEEWAY_S)
        except JoseError as exc:
            raise OidcError(_rejection(exc)) from exc
        return dict(claims)


def _client_secret_basic(client_id: str, secret: str) -> str:
    """The token request's client authentication (RFC 6749 2.3.1: each part form-encoded)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _json_object(raw: bytes, status: int, what: str) -> dict[str, Any]:
    if status != 200:
        raise OidcError(f"the issuer answered {status} for its {what}", 502)
    if len(raw) > _MAX_RESPONSE_BYTES:
        raise OidcError(f"the issuer's {what} is larger than {_MAX_RESPONSE_BYTES} bytes", 502)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OidcError(f"the issuer's {what} is not JSON", 502) from exc
    if not isinstance(doc, dict):
        raise OidcError(f"the issuer's {what} is not a JSON object", 502)
    return doc


_CLAIM_PROBLEMS = {
    "iss": "was issued by another issuer than the configured one",
    "aud": "is meant for another client (its audience is not this client id)",
    "azp": "was issued to another client (azp)",
    "nonce": "does not carry this sign-in's nonce (a replayed token?)",
    "exp": "has an invalid expiry",
    "iat": "has an invalid issue time",
    "sub": "has no subject",
    "at_hash": "does not match its access token",
}


def _rejection(exc: JoseError) -> str:
    """The reason an ID token was refused, in words."""
    if isinstance(exc, ExpiredTokenError):
        return "the ID token has expired"
    if isinstance(exc, BadSignatureError | InvalidKeyIdError):
        return "the ID token's signature does not verify with the issuer's keys"
    if isinstance(exc, DecodeError):
        return "the ID token is malformed"
    if isinstance(exc, UnsupportedAlgorithmError | MissingAlgorithmError):
        return "the ID token is not signed with an algorithm this server accepts"
    if isinstance(exc, MissingClaimError):
        return f"the ID token has no {exc.claim!r} claim"
    if isinstance(exc, ClaimError):
        problem = _CLAIM_PROBLEMS.get(exc.claim, f"has an invalid {exc.claim!r} claim")
        return f"the ID token {problem}"
    return f"the ID token is not acceptable: {exc.error}"
