"""The audit records of changes to people and of sign-ins, appended in the transaction of the
change they describe.

A record names the user by id and name; it never holds a password (not even a digest of one),
a session id, a token or an e-mail address. Sign-in failures and refusals by the throttle are
recorded with the actor ``system:sign-in``: the name they claim is not proven, so it is the
object of the record, never its actor.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.audit import AuditTrail, system_actor
from bastion.auth.roles import PersonRole

__all__ = [
    "SIGN_IN_ACTOR",
    "record_disabled",
    "record_password_reset",
    "record_role",
    "record_sign_in",
    "record_user_created",
]

SIGN_IN_ACTOR = system_actor("sign-in")


def record_user_created(
    conn: sa.Connection,
    audit: AuditTrail,
    *,
    user_id: int,
    name: str,
    project_id: int,
    role: PersonRole,
    sso: bool,
) -> None:
    """``user.create``: a user with ``role`` in the project (``sso``: made by single sign-on)."""
    audit.record(
        conn,
        "user.create",
        "user",
        str(user_id),
        project_id=project_id,
        after={"name": name, "role": role.value, "disabled": False, "sso": sso},
        details={"name": name, "role": role.value, "sso": sso},
    )


def record_role(
    conn: sa.Connection,
    audit: AuditTrail,
    *,
    user_id: int,
    name: str,
    project_id: int,
    before: PersonRole | None,
    after: PersonRole,
) -> None:
    """``user.set_role``: the user's role in the project, unless it did not change."""
    if before is after:
        return
    audit.record(
        conn,
        "user.set_role",
        "user",
        str(user_id),
        project_id=project_id,
        before=None if before is None else {"role": before.value},
        after={"role": after.value},
        details={
            "name": name,
            "role": after.value,
            "previous_role": None if before is None else before.value,
        },
    )


def record_disabled(
    conn: sa.Connection, audit: AuditTrail, *, user_id: int, name: str, before: bool, after: bool
) -> None:
    """``user.disable`` or ``user.enable`` (every session of a disabled user ends)."""
    audit.record(
        conn,
        "user.disable" if after else "user.enable",
        "user",
        str(user_id),
        project_id=None,
        before={"disabled": before},
        after={"disabled": after},
        details={"name": name},
    )


def record_password_reset(
    conn: sa.Connection, audit: AuditTrail, *, user_id: int, name: str
) -> None:
    """``user.reset_password``: a new password was set and the user's sessions ended. Nothing of
    the password is recorded."""
    audit.record(
        conn,
        "user.reset_password",
        "user",
        str(user_id),
        project_id=None,
        details={"name": name, "sessions_ended": True},
    )


def record_sign_in(
    conn: sa.Connection,
    audit: AuditTrail,
    event: str,
    *,
    user_name: str,
    proven: bool,
    client_addr: str,
    method: str,
    reason: str | None,
) -> None:
    """``auth.<event>`` (``auth.login.succeeded``, ``auth.logout``, …) for ``user_name`` from
    ``client_addr``; ``proven``: the person is who the name says (else the actor is
    ``system:sign-in``)."""
    actor = f"user:{user_name}" if proven else SIGN_IN_ACTOR
    audit.acting_as(actor).record(
        conn,
        f"auth.{event}",
        "user",
        user_name[:200] or "(none)",
        project_id=None,
        details={"method": method[:50], "client_addr": client_addr[:64]},
        reason=reason,
    )
