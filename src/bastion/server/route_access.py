"""What each route needs: a permission of the table (:mod:`bastion.auth.permissions`) and the
credentials it accepts.

API routes declare theirs on their :class:`~bastion.server.openapi.ApiRoute`; the routes
served some other way (health, OTLP, the gateway, sign-in, the web UI) are declared in
:data:`OTHER_ROUTES`, and the web UI's read-only pages of a project by one rule
(:func:`project_page_access`). A test walks every route of the application with every role
and checks that each is refused (401, 403, or for a UI page the sign-in redirect) or allowed
exactly as its declaration and the table say, so a route added without a declaration fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bastion.auth.permissions import Permission, holds
from bastion.auth.roles import PersonRole, Role

__all__ = [
    "OTHER_ROUTES",
    "PROJECT_PAGES",
    "PUBLIC",
    "SIGNED_IN",
    "Access",
    "Credentials",
    "needs",
    "project_page_access",
]


class Credentials(StrEnum):
    """Who a route lets in before looking at the permission."""

    PUBLIC = "public"  # anyone, signed in or not
    ANY = "any"  # an API key, or a signed-in person's session cookie (with its CSRF token)
    KEY = "key"  # an API key only (programs: the gateway)
    SESSION = "session"  # a signed-in person only (the web UI)


@dataclass(frozen=True, slots=True)
class Access:
    """A route's requirement: ``permission`` (None: being signed in, or nothing for a public
    route) with one of ``credentials``."""

    permission: Permission | None
    credentials: Credentials

    @property
    def public(self) -> bool:
        return self.credentials is Credentials.PUBLIC

    def allows(self, role: PersonRole | Role | None) -> bool:
        """Whether a caller with ``role`` (a person's, a key's, or None when not signed in)
        gets past this requirement."""
        if self.credentials is Credentials.PUBLIC:
            return True
        if role is None:
            return False
        if self.credentials is Credentials.KEY and isinstance(role, PersonRole):
            return False
        if self.credentials is Credentials.SESSION and isinstance(role, Role):
            return False
        return self.permission is None or holds(role, self.permission)


PUBLIC = Access(None, Credentials.PUBLIC)
SIGNED_IN = Access(None, Credentials.ANY)


def needs(permission: Permission, credentials: Credentials = Credentials.ANY) -> Access:
    """The requirement of holding ``permission``."""
    return Access(permission, credentials)


PROJECT_PAGES = "/ui/p/{project}"
_PROJECT_PAGE = needs(Permission.PROJECT_VIEW, Credentials.SESSION)


def project_page_access(method: str, path: str) -> Access | None:
    """The rule for the web UI's pages of a project: a page shows what every role there may
    read, so a GET under ``/ui/p/{project}`` needs ``project.view`` with the session. A page
    that needs more, and every page that changes something, is declared in OTHER_ROUTES."""
    if method == "GET" and (path == PROJECT_PAGES or path.startswith(PROJECT_PAGES + "/")):
        return _PROJECT_PAGE
    return None


# (method, path) -> access, for every route that is not an ApiRoute. HEAD routes are their
# GET's (aiohttp adds them) and need no line of their own.
OTHER_ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/v1/openapi.json"): PUBLIC,
    ("POST", "/v1/traces"): needs(Permission.SPANS_INGEST),
    ("POST", "/api/public/otel/v1/traces"): needs(Permission.SPANS_INGEST),
    ("GET", "/auth/oidc/login"): PUBLIC,
    ("GET", "/auth/oidc/callback"): PUBLIC,
    ("POST", "/v1/chat/completions"): needs(Permission.GATEWAY_CALL, Credentials.KEY),
    ("POST", "/v1/embeddings"): needs(Permission.GATEWAY_CALL, Credentials.KEY),
    ("POST", "/v1/messages"): needs(Permission.GATEWAY_CALL, Credentials.KEY),
    ("GET", "/v1/models"): needs(Permission.GATEWAY_CALL, Credentials.KEY),
    ("GET", "/ui/static/{digest}/{path}"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/login"): PUBLIC,
    ("POST", "/ui/p/{project}/views"): needs(Permission.VIEWS_SAVE, Credentials.SESSION),
    ("POST", "/ui/p/{project}/views/{view_id}/delete"): needs(
        Permission.VIEWS_SAVE, Credentials.SESSION
    ),
}
