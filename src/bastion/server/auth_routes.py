"""Signing in and out with a name and password, and ``GET /api/v1/me``.

``POST /auth/login`` takes JSON or a form (``name``, ``password``, optional ``next``). A JSON
request is answered with the user and the session's CSRF token; a form with a redirect to
``next``, which may only be a path on this server. Either way the browser gets a new session
cookie: a session id it presented before is ended, never adopted. Repeated failures are
answered 429 with ``Retry-After`` (see :mod:`bastion.auth.throttle`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from bastion.audit import AuditTrail
from bastion.auth import AuthError
from bastion.auth.credentials import presented_key
from bastion.auth.events import SignInEvent, sign_in_event
from bastion.auth.login import password_login
from bastion.auth.sessions import ActiveSession, csrf_token_for, revoke_session
from bastion.server import oidc_routes
from bastion.server.audit_trail import system_trail
from bastion.server.auth import key_principal
from bastion.server.cookie_auth import (
    PROJECT_HEADER,
    SESSION_COOKIE,
    SIGN_IN,
    check_csrf,
    clear_session_cookie,
    install_sign_in,
    session_of,
    set_session_cookie,
)
from bastion.server.db_work import DB
from bastion.server.openapi import ApiError, ApiRoute, json_response, parse_body
from bastion.server.route_access import PUBLIC, SIGNED_IN
from bastion.server.sign_in_checks import MAX_NEXT, client_address, refuse_cross_site, safe_next
from bastion.services.state import STATE
from bastion.settings import Settings

__all__ = ["AUTH_ROUTES", "install_auth"]

_MAX_LOGIN_BODY = 16 * 1024


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="the user name")
    password: str = Field(min_length=1, max_length=1024)
    next: str | None = Field(
        None, max_length=MAX_NEXT, description="a path on this server to go to afterwards"
    )


class UserOut(BaseModel):
    id: int
    name: str
    email: str | None = None


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="send it as X-CSRF-Token with requests that change data")
    expires_at: datetime = Field(description="the session's absolute expiry")
    next: str = Field(description="where to go now: the requested next path, if safe, else /")


class LogoutOut(BaseModel):
    signed_out: bool = Field(description="whether a live session was ended")


class ProjectRoleOut(BaseModel):
    project: str
    role: str


class MeOut(BaseModel):
    kind: Literal["user", "key"] = Field(description="a signed-in person or an API key")
    user: UserOut | None = None
    key_id: int | None = None
    project: str | None = Field(None, description="the project this request acts in")
    role: str | None = Field(None, description="the caller's role in that project")
    projects: list[ProjectRoleOut] = Field(description="every project the caller has a role in")
    csrf_token: str | None = Field(None, description="the session's CSRF token (sessions only)")


async def _login_body(request: web.Request) -> tuple[LoginBody, bool]:
    """The fields, and whether they came as a form (answered with a redirect)."""
    if request.content_length is not None and request.content_length > _MAX_LOGIN_BODY:
        raise ApiError(413, f"a sign-in body is at most {_MAX_LOGIN_BODY} bytes")
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        fields = {k: form.get(k) for k in ("name", "password", "next") if k in form}
        for key, value in fields.items():
            if not isinstance(value, str) or "\x00" in value:
                raise ApiError(400, f"invalid form field {key!r}")
        try:
            return LoginBody.model_validate(fields), True
        except ValueError as exc:
            raise ApiError(400, "invalid form: send name and password") from exc
    raw = await request.content.read(_MAX_LOGIN_BODY + 1)
    if len(raw) > _MAX_LOGIN_BODY:
        raise ApiError(413, f"a sign-in body is at most {_MAX_LOGIN_BODY} bytes")
    return parse_body(raw or b"{}", LoginBody), False


async def login(request: web.Request) -> web.Response:
    refuse_cross_site(request)
    body, is_form = await _login_body(request)
    state = request.app[SIGN_IN]
    engine = request.app[STATE].engine
    replaces = request.cookies.get(SESSION_COOKIE)
    trail = system_trail(request, "sign-in")
    try:
        outcome = await DB.run(
            lambda: password_login(
                engine,
                body.name,
                body.password,
                settings=state.settings,
                client_addr=client_address(request),
                user_agent=request.headers.get("User-Agent"),
                replaces=replaces,
                audit=trail,
            )
        )
    except SQLAlchemyError as exc:
        raise ApiError(503, "cannot sign in while the database is down", "unavailable") from exc
    if replaces:
        state.sessions.forget(replaces)
    if outcome.retry_after_s is not None:
        wait = int(outcome.retry_after_s)
        response = json_response(
            {
                "error": {
                    "type": "rate_limited",
                    "message": f"too many failed sign-ins: try again in {wait} s",
                }
            },
            429,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    if outcome.session is None or outcome.user_id is None:
        raise AuthError("invalid user name or password")
    target = safe_next(body.next)
    if is_form:
        response = web.Response(status=303, headers={"Location": target})
    else:
        user = UserOut(id=outcome.user_id, name=outcome.user_name)
        out = LoginOut(
            user=user,
            csrf_token=outcome.session.csrf_token,
            expires_at=outcome.session.expires_at,
            next=target,
        )
        response = json_response(out)
    set_session_cookie(request, response, outcome.session)
    return response


async def logout(request: web.Request) -> web.Response:
    try:
        found = await session_of(request)
    except AuthError as exc:
        if exc.status == 503:
            raise
        found = None  # already ended: only the cookie is left to clear
    if found is not None:
        session, session_id = found
        await check_csrf(request, session)
        address = client_address(request)
        trail = system_trail(request, "sign-in")
        await DB.write(request, lambda conn: _end_session(conn, session, address, trail))
        request.app[SIGN_IN].sessions.forget(session_id)
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        response = web.Response(status=303, headers={"Location": safe_next(form.get("next"))})
    else:
        response = json_response(LogoutOut(signed_out=found is not None))
    clear_session_cookie(response)
    return response


def _end_session(
    conn: sa.Connection, session: ActiveSession, address: str, trail: AuditTrail
) -> None:
    revoke_session(conn, session.id_hash)
    sign_in_event(
        conn,
        SignInEvent.LOGGED_OUT,
        user_name=session.user_name,
        client_addr=address,
        method="session",
        audit=trail,
    )


async def me(request: web.Request) -> web.Response:
    secret = presented_key(request)
    if secret:
        principal = await key_principal(request, secret)
        role = principal.role.value
        return json_response(
            MeOut(
                kind="key",
                key_id=principal.key_id,
                project=principal.project_slug,
                role=role,
                projects=[ProjectRoleOut(project=principal.project_slug, role=role)],
            )
        )
    found = await session_of(request)
    if found is None:
        raise AuthError("missing API key: send 'Authorization: Bearer <key>', or sign in")
    session, session_id = found
    wanted = request.headers.get(PROJECT_HEADER)
    chosen = next(
        (m for m in session.memberships if wanted is None or m.project_slug == wanted), None
    )
    if wanted is not None and chosen is None:
        raise AuthError(f"{session.user_name!r} has no role in project {wanted!r}", 403)
    return json_response(
        MeOut(
            kind="user",
            user=UserOut(id=session.user_id, name=session.user_name, email=session.email),
            project=chosen.project_slug if chosen else None,
            role=chosen.role.value if chosen else None,
            projects=[
                ProjectRoleOut(project=m.project_slug, role=m.role.value)
                for m in session.memberships
            ],
            csrf_token=csrf_token_for(session_id),
        )
    )


# Outside /api/v1 (a browser's form posts here too): served, described in the README.
SIGN_IN_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "POST",
        "/auth/login",
        login,
        "Sign in with a name and password (JSON, or a form answered with a redirect)",
        "sign-in",
        body=LoginBody,
        response=LoginOut,
        access=PUBLIC,
        errors=(
            (401, "wrong user name or password"),
            (403, "a sign-in from another site's page"),
            (429, "too many failed sign-ins for this name or address (see Retry-After)"),
            (503, "the database is down"),
        ),
    ),
    ApiRoute(
        "POST",
        "/auth/logout",
        logout,
        "Sign out: end the session and clear its cookie",
        "sign-in",
        response=LogoutOut,
        access=PUBLIC,
        errors=((403, "the session's CSRF token is missing or wrong"),),
    ),
]

AUTH_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/api/v1/me",
        me,
        "Who is calling: the signed-in person or the key, its projects and roles, and the "
        "session's CSRF token",
        "sign-in",
        response=MeOut,
        access=SIGNED_IN,
    ),
]


def install_auth(app: web.Application, settings: Settings) -> None:
    """Sessions, the sign-in routes and (when configured) single sign-on."""
    install_sign_in(app, settings)
    app.router.add_routes([route.aiohttp() for route in (*SIGN_IN_ROUTES, *AUTH_ROUTES)])
    app.router.add_routes(oidc_routes.OIDC_ROUTES)
