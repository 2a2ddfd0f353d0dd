"""People: user accounts, their passwords and their role in each project.

User names are lower-case (``Ada`` and ``ada`` are one user), 1-200 letters, digits, ``.``,
``_``, ``-``, ``+`` or ``@``, starting with a letter or digit, so an e-mail address is a valid
name. Disabling a user or changing their password ends all their sessions at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.auth.keys import DEFAULT_PROJECT, ensure_project
from bastion.auth.memberships import Membership, memberships_of, put_membership
from bastion.auth.passwords import check_strength, generate_password, hash_password
from bastion.auth.people_audit import (
    record_disabled,
    record_password_reset,
    record_role,
    record_user_created,
)
from bastion.auth.roles import PersonRole
from bastion.auth.sessions import revoke_user_sessions
from bastion.store.schema import memberships, users

__all__ = [
    "User",
    "UserError",
    "check_user_name",
    "create_user",
    "ensure_first_owner",
    "find_user",
    "has_owner",
    "list_users",
    "set_disabled",
    "set_password",
    "set_role",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,199}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}")


class UserError(ValueError):
    """A user that cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class User:
    """A user account (never its password hash)."""

    id: int
    name: str
    email: str | None
    disabled: bool
    sso: bool  # created by single sign-on
    created_at: datetime
    memberships: tuple[Membership, ...]


def _now() -> datetime:
    return datetime.now(UTC)


def check_user_name(raw: str) -> str:
    """The normalised (lower-case) user name, or :class:`UserError` saying the rule."""
    name = raw.lower()
    if _NAME.fullmatch(name) is None:
        raise UserError(
            f"invalid user name {raw!r}: use 1-200 letters, digits, '.', '_', '-', '+' or '@', "
            "starting with a letter or digit"
        )
    return name


def _check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if len(email) > 320 or _EMAIL.fullmatch(email) is None:
        raise UserError(f"invalid e-mail address {email!r}")
    return email


def create_user(
    conn: sa.Connection,
    name: str,
    *,
    password: str | None,
    role: PersonRole,
    project: str = DEFAULT_PROJECT,
    email: str | None = None,
    oidc_identity: tuple[str, str] | None = None,
    audit: AuditTrail | None = None,
) -> User:
    """Create a user with ``role`` in ``project`` (created if new). ``password`` is checked
    (:class:`~bastion.auth.passwords.WeakPassword`) and stored as its argon2id hash; None
    for a user who signs in only through SSO (``oidc_identity`` is its issuer and subject).
    With ``audit``, recorded as ``user.create`` in the same transaction."""
    name = check_user_name(name)
    email = _check_email(email)
    if password is not None:
        check_strength(name, password)
    if find_user(conn, name) is not None:
        raise UserError(f"a user named {name!r} already exists")
    try:
        project_id = ensure_project(conn, project)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    now = _now()
    issuer, subject = oidc_identity if oidc_identity else (None, None)
    result = conn.execute(
        users.insert().values(
            name=name,
            email=email,
            password_hash=hash_password(password) if password is not None else None,
            oidc_issuer=issuer,
            oidc_subject=subject,
            disabled=False,
            created_at=now,
            updated_at=now,
        )
    )
    user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    put_membership(conn, user_id, project_id, role)
    if audit is not None:
        sso = oidc_identity is not None
        record_user_created(
            conn, audit, user_id=user_id, name=name, project_id=project_id, role=role, sso=sso
        )
    found = find_user(conn, name)
    assert found is not None  # inserted above, in this transaction
    return found


def _user(conn: sa.Connection, row: sa.Row[tuple[object, ...]]) -> User:
    return User(
        id=row.id,
        name=row.name,
        email=row.email,
        disabled=bool(row.disabled),
        sso=row.oidc_subject is not None,
        created_at=row.created_at,
        memberships=memberships_of(conn, row.id),
    )


def find_user(conn: sa.Connection, name: str, *, user_id: int | None = None) -> User | None:
    """The user named ``name`` (any case), or with id ``user_id`` when given; None if none."""
    condition = users.c.id == user_id if user_id is not None else users.c.name == name.lower()
    row = conn.execute(sa.select(users).where(condition)).first()
    return _user(conn, row) if row is not None else None


def _require(conn: sa.Connection, name: str) -> User:
    found = find_user(conn, name)
    if found is None:
        raise UserError(f"no user named {name.lower()!r}")
    return found


def list_users(conn: sa.Connection) -> list[User]:
    """Every user, oldest first, with their roles."""
    rows = conn.execute(sa.select(users).order_by(users.c.id)).all()
    return [_user(conn, row) for row in rows]


def set_role(
    conn: sa.Connection,
    name: str,
    role: PersonRole,
    project: str = DEFAULT_PROJECT,
    *,
    audit: AuditTrail | None = None,
) -> User:
    """Give ``name`` the role ``role`` in ``project`` (created if new), replacing any other;
    with ``audit``, a change is recorded as ``user.set_role``."""
    user = _require(conn, name)
    try:
        project_id = ensure_project(conn, project)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    put_membership(conn, user.id, project_id, role)
    if audit is not None:
        before = next((m.role for m in user.memberships if m.project_id == project_id), None)
        record_role(
            conn,
            audit,
            user_id=user.id,
            name=user.name,
            project_id=project_id,
            before=before,
            after=role,
        )
    return _require(conn, name)


def set_disabled(
    conn: sa.Connection, name: str, disabled: bool, *, audit: AuditTrail | None = None
) -> User:
    """Disable (ending every session of the user at once) or enable ``name``; with ``audit``,
    a change is recorded as ``user.disable`` or ``user.enable``."""
    user = _require(conn, name)
    conn.execute(
        users.update().where(users.c.id == user.id).values(disabled=disabled, updated_at=_now())
    )
    if disabled:
        revoke_user_sessions(conn, user.id)
    if audit is not None and user.disabled != disabled:
        record_disabled(
            conn, audit, user_id=user.id, name=user.name, before=user.disabled, after=disabled
        )
    return _require(conn, name)


def set_password(
    conn: sa.Connection, name: str, password: str, *, audit: AuditTrail | None = None
) -> User:
    """Set a new password (checked first) and end every session of the user; with ``audit``,
    recorded as ``user.reset_password`` (nothing of the password)."""
    user = _require(conn, name)
    check_strength(user.name, password)
    conn.execute(
        users.update()
        .where(users.c.id == user.id)
        .values(password_hash=hash_password(password), updated_at=_now())
    )
    revoke_user_sessions(conn, user.id)
    if audit is not None:
        record_password_reset(conn, audit, user_id=user.id, name=user.name)
    return user


def has_owner(conn: sa.Connection) -> bool:
    """Whether any enabled user is an owner of some project."""
    found = conn.execute(
        sa.select(users.c.id)
        .join(memberships, memberships.c.user_id == users.c.id)
        .where(memberships.c.role == PersonRole.OWNER.value, users.c.disabled.is_(False))
        .limit(1)
    ).first()
    return found is not None


def ensure_first_owner(
    conn: sa.Connection, name: str = "admin", *, audit: AuditTrail | None = None
) -> tuple[str, str] | None:
    """When no one owns a project yet: create an owner of the default project with a generated
    strong password and return its name and password (shown once); else None."""
    if has_owner(conn):
        return None
    candidate, n = name, 1
    while find_user(conn, candidate) is not None:
        n += 1
        candidate = f"{name}{n}"
    password = generate_password()
    create_user(conn, candidate, password=password, role=PersonRole.OWNER, audit=audit)
    return candidate, password
