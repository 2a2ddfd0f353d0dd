"""Sign-in events, recorded in one place.

Every sign-in success, failure and refusal by the throttle, and every sign-out, passes through
:func:`sign_in_event`, inside the transaction that recorded the attempt: the audit log is
written from here. Nothing secret is ever passed in (no password, session id, token or code).
"""

from __future__ import annotations

import logging
from enum import StrEnum

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.auth.people_audit import record_sign_in

__all__ = ["SignInEvent", "sign_in_event"]

log = logging.getLogger("bastion.auth")


class SignInEvent(StrEnum):
    """What happened."""

    SUCCEEDED = "login.succeeded"
    FAILED = "login.failed"
    THROTTLED = "login.throttled"
    LOGGED_OUT = "logout"


def sign_in_event(
    conn: sa.Connection,
    event: SignInEvent,
    *,
    user_name: str,
    client_addr: str,
    method: str,
    reason: str | None = None,
    audit: AuditTrail,
) -> None:
    """Record ``event`` for ``user_name`` from ``client_addr`` by ``method`` (password, oidc,
    session) in the log and, in ``conn``'s transaction, the audit log (``auth.<event>``);
    ``reason`` says why a sign-in failed, in words safe to keep."""
    quiet = event in (SignInEvent.SUCCEEDED, SignInEvent.LOGGED_OUT)
    record_sign_in(
        conn,
        audit,
        event.value,
        user_name=user_name,
        proven=quiet,
        client_addr=client_addr,
        method=method,
        reason=reason,
    )
    level = logging.INFO if quiet else logging.WARNING
    log.log(
        level,
        "%s: user %r from %s by %s%s",
        event.value,
        user_name[:200],
        client_addr[:64],
        method,
        f" ({reason})" if reason else "",
    )
