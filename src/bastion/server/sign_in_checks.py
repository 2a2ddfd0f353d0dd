"""Checks of what a browser sends to the sign-in routes: where to go afterwards (never off
this server), who the client is (for the throttle), and which site the request came from."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from aiohttp import web

from bastion.auth import AuthError

__all__ = ["MAX_NEXT", "client_address", "refuse_cross_site", "safe_next"]

MAX_NEXT = 2000
# Anything but printable ASCII, and backslashes: browsers drop tabs and newlines inside a URL
# (turning "/\t/evil.example" into "//evil.example") and read "\" as "/".
_UNSAFE_IN_NEXT = re.compile(r"[^\x21-\x7e]|\\")


def safe_next(value: object) -> str:
    """``value`` when it is a path on this server, else ``/``: a single leading ``/``, no
    ``//``, no scheme, no backslash, only printable ASCII. Never an open redirect."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_NEXT:
        return "/"
    if value.startswith("//") or _UNSAFE_IN_NEXT.search(value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def client_address(request: web.Request) -> str:
    """The peer's address, as the throttle counts it."""
    return (request.remote or "unknown")[:64]


def refuse_cross_site(request: web.Request) -> None:
    """A 403 when the browser says the request comes from another site's page (login CSRF:
    signing a victim in to the attacker's account)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc != request.host:
        raise AuthError(f"cross-site sign-in refused: the request came from {origin[:200]!r}", 403)
