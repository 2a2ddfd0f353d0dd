"""How a UI page is declared and served: who is looking (the signed-in person), in which
project, with what role; rendering; database work off the event loop; HTML error pages.

A handler declared with :func:`page` receives a :class:`Page`. The wrapper has already:
found the browser session (else redirected to ``/ui/login?next=<this page>``), found the
project of the URL among the person's projects (else a 404 that does not say whether the
project exists), checked the CSRF token of a request that changes something (else a 403), and
it adds the security headers (:mod:`bastion.ui.security`) to whatever the handler returns.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import sqlalchemy as sa
from aiohttp import web

from bastion.auth import AuthError, Permission, Principal
from bastion.auth.memberships import Membership
from bastion.auth.sessions import ActiveSession, csrf_matches, csrf_token_for
from bastion.services.state import STATE
from bastion.store.transactions import run_write
from bastion.ui.nav import NAV
from bastion.ui.security import secure
from bastion.ui.state import UI

__all__ = [
    "Page",
    "UiRoute",
    "Viewer",
    "html",
    "login_url",
    "page",
    "public",
    "render",
    "safe_next",
]

_T = TypeVar("_T")
PageHandler = Callable[["Page"], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNSAFE_IN_NEXT = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True, slots=True)
class UiRoute:
    """One UI route: method, aiohttp path pattern and a wrapped handler."""

    method: str
    path: str
    handler: Handler


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person looking at a page."""

    session: ActiveSession
    csrf_token: str

    @property
    def name(self) -> str:
        return self.session.user_name

    @property
    def memberships(self) -> tuple[Membership, ...]:
        return self.session.memberships

    def membership(self, project: str) -> Membership | None:
        return next((m for m in self.memberships if m.project_slug == project), None)


@dataclass(frozen=True, slots=True)
class Page:
    """A request for a page of one project, by a person with a role there."""

    request: web.Request
    viewer: Viewer
    project: Membership

    @property
    def principal(self) -> Principal:
        s = self.viewer.session
        p = self.project
        return Principal.person(p.project_id, p.project_slug, s.user_id, s.user_name, p.role)

    @property
    def project_id(self) -> int:
        return self.project.project_id

    @property
    def base(self) -> str:
        """The project's URL prefix: ``/ui/p/<project>``."""
        return f"/ui/p/{self.project.project_slug}"

    def can(self, permission: Permission) -> bool:
        """Whether the person's role here holds ``permission`` (bastion.auth.permissions)."""
        return self.principal.can(permission)

    async def read(self, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` on a worker thread with one connection."""
        engine = self.request.app[STATE].engine

        def run() -> _T:
            with engine.connect() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def write(self, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` in one write transaction on a worker thread."""
        engine = self.request.app[STATE].engine
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_write(engine, work)
        )

    def render(self, template: str, status: int = 200, /, **context: Any) -> web.Response:
        """The template rendered with the page's context (person, project, navigation)."""
        return render(self.request, template, status, page=self, viewer=self.viewer, **context)

    def error(self, status: int, message: str) -> web.Response:
        """An error page, or for an htmx request the message alone (swapped in place)."""
        fragment = self.request.headers.get("HX-Request") == "true"
        template = "error_fragment.html" if fragment else "error.html"
        return self.render(template, status, status=status, message=message)


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def render(
    request: web.Request, template: str, status: int = 200, /, **context: Any
) -> web.Response:
    """``template`` rendered with ``context`` plus what every template may use."""
    context.setdefault("page", None)
    context.setdefault("viewer", None)
    text = (
        request.app[UI]
        .templates.get_template(template)
        .render(nav=NAV, request_path=request.path_qs, **context)
    )
    return html(text, status)


def safe_next(value: object) -> str:
    """``value`` when it is a UI path on this server, else ``/ui/``: never an open redirect."""
    if not isinstance(value, str) or not value.startswith("/ui/") or len(value) > 2000:
        return "/ui/"
    if value.startswith("//") or _UNSAFE_IN_NEXT.search(value):
        return "/ui/"
    parts = urlsplit(value)
    return "/ui/" if parts.scheme or parts.netloc else value


def login_url(next_path: str) -> str:
    return f"/ui/login?next={quote(safe_next(next_path), safe='/')}"


def _to_login(request: web.Request) -> web.Response:
    """To the login page, then back here. An htmx fragment request sends the whole page."""
    if request.headers.get("HX-Request") == "true":
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = current.path + (f"?{current.query}" if current.query else "")
        response = web.Response(status=200, text="")
        response.headers["HX-Redirect"] = login_url(back)
        return response
    target = request.path_qs if request.method == "GET" else "/ui/"
    return web.Response(status=303, headers={"Location": login_url(target)})


async def viewer_of(request: web.Request) -> Viewer | None:
    """The signed-in person, or None (no cookie, or a session that has ended). Raises
    AuthError (503) when the database cannot be read."""
    try:
        found = await request.app[UI].hooks.session_of(request)
    except AuthError as exc:
        if exc.status >= 500:
            raise
        return None
    if found is None:
        return None
    session, session_id = found
    return Viewer(session, csrf_token_for(session_id))


async def _csrf_ok(request: web.Request, viewer: Viewer) -> bool:
    if request.method in _SAFE_METHODS:
        return True
    token = request.headers.get("X-CSRF-Token")
    if token is None and request.content_type == "application/x-www-form-urlencoded":
        field = (await request.post()).get("csrf_token")
        token = field if isinstance(field, str) else None
    return bool(token) and csrf_matches(viewer.session, token or "")


def _holds_nul(request: web.Request) -> bool:
    """PostgreSQL cannot compare text holding NUL: such a value must never reach a query."""
    return "\x00" in request.path or any("\x00" in v for v in request.query.values())


def _unavailable(request: web.Request) -> web.Response:
    message = "The database is not answering right now. Try again in a moment."
    return render(request, "error.html", 503, status=503, message=message)


def page(handler: PageHandler) -> Handler:
    """Serve ``handler`` as a page of the project named in the URL (see the module notes)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            viewer = await viewer_of(request)
            if viewer is None:
                return secure(_to_login(request))
            project = viewer.membership(request.match_info.get("project", ""))
            if _holds_nul(request):
                message = "The address holds a NUL character (%00), which no name or id has."
                response: web.StreamResponse = render(
                    request, "error.html", 400, viewer=viewer, status=400, message=message
                )
            elif project is None:
                message = "No such project among yours. Pick one of your projects above."
                response = render(
                    request, "error.html", 404, viewer=viewer, status=404, message=message
                )
            elif not await _csrf_ok(request, viewer):
                message = "This form is stale or was not sent by this site (missing CSRF token)."
                response = render(
                    request, "error.html", 403, viewer=viewer, status=403, message=message
                )
            else:
                response = await handler(Page(request, viewer, project))
        except AuthError as exc:  # only a database that cannot be read gets here
            if exc.status < 500:
                raise
            response = _unavailable(request)
        except sa.exc.OperationalError:
            response = _unavailable(request)
        return secure(response)

    return serve


def public(handler: Handler, *, cacheable: bool = False) -> Handler:
    """Serve ``handler`` to anyone (the login page, static files), with the security headers."""

    async def serve(request: web.Request) -> web.StreamResponse:
        return secure(await handler(request), cacheable=cacheable)

    return serve
