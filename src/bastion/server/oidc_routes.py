"""Single sign-on routes: ``GET /auth/oidc/login`` sends the browser to the issuer, and
``GET /auth/oidc/callback`` finishes the sign-in it comes back with (see
:mod:`bastion.auth.oidc`). Both answer 404 while single sign-on is not configured.
"""

from __future__ import annotations

import hmac

import sqlalchemy as sa
from aiohttp import web

from bastion.audit import AuditTrail, system_actor
from bastion.auth.events import SignInEvent, sign_in_event
from bastion.auth.login import start_session
from bastion.auth.oidc import OidcClient, OidcError
from bastion.auth.oidc_pending import PENDING_MAX_AGE_S, PendingError, PendingSignIn
from bastion.auth.oidc_users import SsoIdentity, sso_user
from bastion.auth.sessions import NewSession
from bastion.server.audit_trail import system_trail
from bastion.server.cookie_auth import SESSION_COOKIE, SIGN_IN, SignInState, set_session_cookie
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError
from bastion.server.sign_in_checks import client_address, safe_next

__all__ = ["OIDC_ROUTES"]

PENDING_COOKIE = "bastion_oidc"
_CALLBACK = "/auth/oidc/callback"


def _client(request: web.Request) -> tuple[SignInState, OidcClient]:
    state = request.app[SIGN_IN]
    if state.oidc is None:
        raise ApiError(404, "single sign-on is not configured (auth.oidc.issuer)", "not_found")
    return state, state.oidc


async def oidc_login(request: web.Request) -> web.Response:
    state, client = _client(request)
    redirect_uri = state.settings.oidc.redirect_url or str(
        request.url.with_path(_CALLBACK).with_query(None)
    )
    try:
        url, pending = await client.start(redirect_uri, safe_next(request.query.get("next")))
    except OidcError as exc:
        raise ApiError(exc.status, str(exc), "sso_error") from exc
    response = web.Response(status=302, headers={"Location": url})
    response.set_cookie(
        PENDING_COOKIE,
        pending.seal(client.client_secret),
        max_age=PENDING_MAX_AGE_S,
        path="/auth/oidc",
        httponly=True,
        # Lax: the issuer's redirect back is a top-level GET, which carries it.
        samesite="Lax",
        secure=request.secure or state.settings.cookie_secure,
    )
    return response


def _pending(request: web.Request, client: OidcClient) -> PendingSignIn:
    try:
        pending = PendingSignIn.open(request.cookies.get(PENDING_COOKIE), client.client_secret)
    except PendingError as exc:
        raise ApiError(400, str(exc), "sso_error") from exc
    state = request.query.get("state", "")
    if not hmac.compare_digest(state.encode(), pending.state.encode()):
        raise ApiError(
            400,
            "the callback's state does not match this sign-in (forged or replayed)",
            "sso_error",
        )
    return pending


async def oidc_callback(request: web.Request) -> web.Response:
    state, client = _client(request)
    pending = _pending(request, client)
    address = client_address(request)
    try:
        if "error" in request.query:
            raise OidcError(f"the issuer refused the sign-in: {request.query['error'][:100]}")
        code = request.query.get("code")
        if not code:
            raise OidcError("the callback carries no authorization code", 400)
        claims = await client.finish(pending, code)
        identity = SsoIdentity.from_claims(client.issuer, claims, state.settings.oidc)
        session = await DB.write(
            request, lambda conn: _sign_in(conn, identity, state, request, address)
        )
    except OidcError as exc:
        reason = str(exc)
        trail = system_trail(request, "sign-in")
        await DB.write(request, lambda conn: _failed(conn, reason, address, trail))
        raise ApiError(exc.status, reason, "sso_error") from exc
    response = web.Response(status=303, headers={"Location": pending.next_path})
    set_session_cookie(request, response, session)
    response.del_cookie(PENDING_COOKIE, path="/auth/oidc")
    replaced = request.cookies.get(SESSION_COOKIE)
    if replaced:
        state.sessions.forget(replaced)
    return response


def _sign_in(
    conn: sa.Connection,
    identity: SsoIdentity,
    state: SignInState,
    request: web.Request,
    address: str,
) -> NewSession:
    trail = system_trail(request, "sign-in")
    user_id, user_name = sso_user(
        conn, identity, state.settings.oidc, audit=trail.acting_as(system_actor("oidc"))
    )
    return start_session(
        conn,
        user_id,
        user_name,
        settings=state.settings,
        client_addr=address,
        user_agent=request.headers.get("User-Agent"),
        replaces=request.cookies.get(SESSION_COOKIE),
        method="oidc",
        audit=trail,
    )


def _failed(conn: sa.Connection, reason: str, address: str, trail: AuditTrail) -> None:
    sign_in_event(
        conn,
        SignInEvent.FAILED,
        user_name="(single sign-on)",
        client_addr=address,
        method="oidc",
        reason=reason,
        audit=trail,
    )


OIDC_ROUTES = [
    web.get("/auth/oidc/login", oidc_login),
    web.get(_CALLBACK, oidc_callback),
]
