"""The credential a request presents: an API key from its headers."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from bastion.auth.keys import AuthError

__all__ = ["presented_key"]


def presented_key(request: web.Request, *, allow_basic: bool = False) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, ``x-api-key`` or (optionally) Basic.

    With Basic auth (the Langfuse exporter's scheme) the key may be given as either the user
    name or the password, so both ``bst_…:`` and ``pk-lf-…:bst_…`` work.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_basic and scheme.lower() == "basic":
        try:
            user, _, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthError("malformed Basic authorization header") from exc
        for candidate in (password, user):
            if candidate.startswith("bst_"):
                return candidate
        return password or user or None
    for name in ("x-api-key", "x-bastion-api-key"):
        if name in request.headers:
            return request.headers[name].strip()
    return None
