"""Requests signed in with the browser session cookie.

The cookie is HttpOnly and SameSite=Lax, Secure over HTTPS (or always, by setting). A request
that changes something (POST, PUT, PATCH, DELETE) must also carry the session's CSRF token, in
the ``X-CSRF-Token`` header or a ``csrf_token`` form field: another site can make a browser
send the cookie, never the token. API-key requests need no token (nothing sends a key by
itself).

A person acts in one project at a time: the one named by ``X-Bastion-Project``, else their
first. With no role there the request is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from bastion.auth import AuthError, Permission, Principal
from bastion.auth.oidc import OidcClient
from bastion.auth.session_cache import SessionCache
from bastion.auth.sessions import ActiveSession, NewSession, csrf_matches
from bastion.services.state import STATE
from bastion.settings import AuthSettings, ConfigError, Settings

__all__ = [
    "CSRF_HEADER",
    "PROJECT_HEADER",
    "SESSION_COOKIE",
    "SIGN_IN",
    "SignInState",
    "clear_session_cookie",
    "cookie_principal",
    "install_sign_in",
    "session_of",
    "set_session_cookie",
]

SESSION_COOKIE = "bastion_session"
CSRF_HEADER = "X-CSRF-Token"
PROJECT_HEADER = "X-Bastion-Project"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass
class SignInState:
    """What the sign-in routes and the cookie check share in one server process."""

    settings: AuthSettings
    sessions: SessionCache
    oidc: OidcClient | None


SIGN_IN = web.AppKey("bastion_sign_in", SignInState)


def _oidc_client(settings: AuthSettings) -> OidcClient | None:
    oidc = settings.oidc
    if not oidc.issuer:
        return None
    secret = os.environ.get(oidc.client_secret_env, "")
    if not secret:
        raise ConfigError(
            f"auth.oidc.issuer is set, but the environment variable {oidc.client_secret_env} "
            "(auth.oidc.client_secret_env) holding the client secret is not"
        )
    try:
        return OidcClient(oidc, secret)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def install_sign_in(app: web.Application, settings: Settings) -> None:
    """Set up sessions (and single sign-on, when configured) once the app's state exists."""
    oidc = _oidc_client(settings.auth)  # a configuration error stops the start at once

    async def start(app: web.Application) -> None:
        auth = settings.auth
        sessions = SessionCache(
            app[STATE].engine, idle_s=auth.session_idle_s, cache_s=auth.session_cache_s
        )
        app[SIGN_IN] = SignInState(settings=auth, sessions=sessions, oidc=oidc)

    app.on_startup.append(start)


def set_session_cookie(
    request: web.Request, response: web.StreamResponse, session: NewSession
) -> None:
    """Give the browser the new session's id."""
    state = request.app[SIGN_IN]
    response.set_cookie(
        SESSION_COOKIE,
        session.session_id,
        max_age=int(state.settings.session_absolute_s),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.secure or state.settings.cookie_secure,
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


async def session_of(request: web.Request) -> tuple[ActiveSession, str] | None:
    """The request's live session and its id, or None without a cookie. Raises AuthError
    when the cookie names no live session, or the database cannot be read (503)."""
    state = request.app.get(SIGN_IN)
    session_id = request.cookies.get(SESSION_COOKIE)
    if state is None or not session_id:
        return None
    try:
        session = await state.sessions.resolve(session_id)
    except SQLAlchemyError as exc:
        raise AuthError("cannot check the session while the database is down", 503) from exc
    if session is None:
        raise AuthError("the session has ended (signed out, expired or revoked): sign in again")
    return session, session_id


async def check_csrf(request: web.Request, session: ActiveSession) -> None:
    """A 403 for a state-changing request without this session's CSRF token."""
    if request.method in _SAFE_METHODS:
        return
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.content_type in _FORMS:
        form = await request.post()
        field = form.get("csrf_token")
        token = field if isinstance(field, str) else None
    if not token:
        raise AuthError(
            f"missing CSRF token: a signed-in browser request that changes something must "
            f"send the {CSRF_HEADER} header (GET /api/v1/me gives the token)",
            status=403,
        )
    if not csrf_matches(session, token):
        raise AuthError("invalid CSRF token: it is not this session's", status=403)


def _principal_in_project(request: web.Request, session: ActiveSession) -> Principal:
    wanted = request.headers.get(PROJECT_HEADER)
    if wanted is not None:
        chosen = next((m for m in session.memberships if m.project_slug == wanted), None)
        if chosen is None:
            raise AuthError(f"{session.user_name!r} has no role in project {wanted!r}", 403)
    elif session.memberships:
        chosen = session.memberships[0]
    else:
        raise AuthError(f"{session.user_name!r} has no role in any project", 403)
    return Principal.person(
        chosen.project_id, chosen.project_slug, session.user_id, session.user_name, chosen.role
    )


async def cookie_principal(request: web.Request, permission: Permission) -> Principal:
    """The signed-in person a request without an API key acts as, holding ``permission``."""
    found = await session_of(request)
    if found is None:
        raise AuthError("missing API key: send 'Authorization: Bearer <key>', or sign in")
    session, _ = found
    await check_csrf(request, session)
    principal = _principal_in_project(request, session)
    principal.require(permission)
    return principal
