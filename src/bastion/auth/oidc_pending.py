"""A single sign-on in progress, carried by the browser between the redirect to the issuer and
the callback: the ``state`` to match, the ``nonce`` the ID token must hold, the PKCE code
verifier, and where to go afterwards.

It travels in a short-lived cookie, MAC'ed with a key derived from the client secret (which
every server process has), so any worker can finish a sign-in another one started, and a
cookie made up or altered by anyone else is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import asdict, dataclass

import orjson

__all__ = ["PENDING_MAX_AGE_S", "PendingError", "PendingSignIn"]

#: How long a sign-in may take at the issuer.
PENDING_MAX_AGE_S = 600
_CONTEXT = b"bastion oidc pending sign-in v1"


class PendingError(ValueError):
    """The pending sign-in cookie is missing, altered or too old."""


def _key(client_secret: str) -> bytes:
    return hmac.new(client_secret.encode(), _CONTEXT, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """What the callback needs to finish the sign-in the login route started."""

    state: str
    nonce: str
    code_verifier: str
    next_path: str
    redirect_uri: str
    started_at: float

    def seal(self, client_secret: str) -> str:
        """The cookie value: the fields and their MAC."""
        body = _b64(orjson.dumps(asdict(self)))
        mac = hmac.new(_key(client_secret), body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    @classmethod
    def open(cls, sealed: str | None, client_secret: str) -> PendingSignIn:
        """The sign-in sealed in ``sealed``; :class:`PendingError` if it cannot be trusted."""
        if not sealed:
            raise PendingError(
                "no sign-in in progress (its cookie is missing or expired): start again at "
                "/auth/oidc/login"
            )
        body, _, mac = sealed.partition(".")
        expected = hmac.new(_key(client_secret), body.encode(), hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(_unb64(mac), expected)
            fields = orjson.loads(_unb64(body)) if valid else None
            pending = cls(**fields) if isinstance(fields, dict) else None
        except (binascii.Error, ValueError, TypeError) as exc:
            raise PendingError("the sign-in cookie is malformed: start again") from exc
        if pending is None:
            raise PendingError("the sign-in cookie was altered: start again")
        if not 0 <= time.time() - pending.started_at <= PENDING_MAX_AGE_S:
            raise PendingError("the sign-in took too long: start again")
        return pending
