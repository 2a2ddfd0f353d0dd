"""The headers every UI response carries: a strict Content-Security-Policy and friends.

The policy allows only this server's own scripts, styles and images (plus ``data:`` images):
no inline script, no inline event handler, no inline style, no framing by another site, no
``<base>`` to re-point relative links, and forms that post only here. Data from spans is
escaped by the templates; the policy is the second wall should anything slip through.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["CONTENT_SECURITY_POLICY", "secure"]

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)


def secure(response: web.StreamResponse, *, cacheable: bool = False) -> web.StreamResponse:
    """``response`` with the UI's security headers; pages and fragments hold project data and
    are never stored by a cache (``cacheable`` is for the content-hashed static files)."""
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Frame-Options"] = "DENY"
    if not cacheable:
        headers["Cache-Control"] = "no-store"
    return response
