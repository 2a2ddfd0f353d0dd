"""The way in: ``/`` and ``/ui/`` lead to the first project's traces (or the login page), the
login page itself, and the pages of sections still to come.

The login form posts to ``/auth/login`` (the server's sign-in route): without JavaScript the
browser follows its redirect; with it, ``app.js`` posts the same fields as JSON and shows a
refusal on the page instead of leaving it.
"""

from __future__ import annotations

from aiohttp import web

from bastion.services.state import STATE
from bastion.ui.nav import NAV, Section
from bastion.ui.pages import Page, UiRoute, page, public, render, safe_next, viewer_of

__all__ = ["ROUTES"]


async def root(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "/ui/"})


async def home(request: web.Request) -> web.StreamResponse:
    """The first project's traces for a signed-in person, else the login page."""
    viewer = await viewer_of(request)
    if viewer is None:
        return web.Response(status=303, headers={"Location": "/ui/login"})
    if not viewer.memberships:
        message = (
            "You have no role in any project yet: an owner or admin gives you one with "
            "`bastion users set-role`."
        )
        return render(request, "error.html", 403, viewer=viewer, status=403, message=message)
    first = viewer.memberships[0].project_slug
    return web.Response(status=303, headers={"Location": f"/ui/p/{first}/traces"})


async def login(request: web.Request) -> web.StreamResponse:
    next_path = safe_next(request.query.get("next"))
    viewer = await viewer_of(request)
    if viewer is not None:
        return web.Response(status=303, headers={"Location": next_path})
    settings = request.app[STATE].settings
    return render(
        request,
        "login.html",
        next=next_path,
        sso=bool(settings.auth.oidc.issuer),
    )


def _coming(section: Section) -> UiRoute:
    async def coming_next(p: Page) -> web.StreamResponse:
        return p.render("coming_next.html", section=section, current=section.key)

    return UiRoute("GET", f"/ui/p/{{project}}/{section.key}", page(coming_next))


async def project_home(p: Page) -> web.StreamResponse:
    return web.Response(status=303, headers={"Location": f"{p.base}/traces"})


ROUTES = [
    UiRoute("GET", "/", public(root)),
    UiRoute("GET", "/ui", public(root)),
    UiRoute("GET", "/ui/", public(home)),
    UiRoute("GET", "/ui/login", public(login)),
    UiRoute("GET", "/ui/p/{project}", page(project_home)),
    UiRoute("GET", "/ui/p/{project}/", page(project_home)),
    *(_coming(section) for section in NAV if not section.ready),
]
