"""Authenticating requests: API keys from headers, resolved from memory, or else the browser
session cookie of a signed-in person (see :mod:`bastion.server.cookie_auth`)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from bastion.auth import AuthError, Permission, Principal
from bastion.auth.credentials import presented_key
from bastion.server.cookie_auth import cookie_principal
from bastion.services.state import STATE

__all__ = ["authenticate", "key_principal"]


async def authenticate(
    request: web.Request, permission: Permission, *, allow_basic: bool = False
) -> Principal:
    """Resolve the request's key, or else its session cookie, to a principal whose role holds
    ``permission`` (:data:`bastion.auth.permissions.PERMISSIONS`); raise AuthError. A key is
    checked from memory, with no database round trip for a known key."""
    secret = presented_key(request, allow_basic=allow_basic)
    if not secret:
        return await cookie_principal(request, permission)
    principal = await key_principal(request, secret)
    principal.require(permission)
    return principal


async def key_principal(request: web.Request, secret: str) -> Principal:
    """The key ``secret``'s principal, whatever its role; AuthError if unknown or revoked."""
    keys = request.app[STATE].keys
    try:
        principal = await keys.lookup_or_reload(secret)
    except SQLAlchemyError as exc:
        raise AuthError("cannot check a new API key while the database is down", 503) from exc
    if principal is None:
        raise AuthError("invalid or revoked API key")
    return principal
