"""The user a single sign-on stands for: found by the issuer's subject, created at the first
sign-in when allowed, given the roles the ID token's claims map to.

A person is refused, and nothing is created, when their e-mail domain is not allowed, when no
claim maps to a role and there is no default role for a new user, or when the name their
token would give them already belongs to another account (an SSO identity never takes over
an existing user, local or not).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.auth.keys import ensure_project
from bastion.auth.memberships import memberships_of, put_membership
from bastion.auth.oidc import OidcError
from bastion.auth.people_audit import record_role
from bastion.auth.roles import PersonRole
from bastion.auth.users import UserError, check_user_name, create_user, find_user
from bastion.settings import OidcSettings
from bastion.store.schema import users

__all__ = ["SsoIdentity", "sso_user"]


@dataclass(frozen=True, slots=True)
class SsoIdentity:
    """What the checked ID token says about the person."""

    issuer: str
    subject: str
    name: str | None
    email: str | None
    roles: dict[str, PersonRole]  # by project slug

    @classmethod
    def from_claims(
        cls, issuer: str, claims: Mapping[str, Any], settings: OidcSettings
    ) -> SsoIdentity:
        """Read the claims; :class:`OidcError` (403) when the e-mail domain is not allowed."""
        email = claims.get("email")
        email = email.lower() if isinstance(email, str) else None
        _check_domain(email, claims.get("email_verified"), settings.allowed_domains)
        name = claims.get(settings.name_claim)
        return cls(
            issuer=issuer,
            subject=str(claims["sub"]),
            name=name.lower() if isinstance(name, str) else None,
            email=email,
            roles=_mapped_roles(claims.get(settings.role_claim), settings),
        )


def _check_domain(email: str | None, verified: object, allowed: list[str]) -> None:
    if not allowed:
        return
    if email is None:
        raise OidcError("sign-in needs an e-mail address, and the ID token carries none", 403)
    if verified is False:
        raise OidcError(f"the e-mail address {email!r} is not verified by the issuer", 403)
    domain = email.rpartition("@")[2]
    if domain not in {d.lower().lstrip("@") for d in allowed}:
        raise OidcError(f"e-mail addresses of {domain!r} may not sign in here", 403)


def _mapped_roles(values: object, settings: OidcSettings) -> dict[str, PersonRole]:
    """Each project's highest role among those the claim's values map to."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        return {}
    roles: dict[str, PersonRole] = {}
    for value in values:
        target = settings.role_mapping.get(str(value))
        if target is None:
            continue
        project, _, role_name = target.rpartition(":")
        project = project or settings.project
        role = PersonRole(role_name)
        if project not in roles or role.rank > roles[project].rank:
            roles[project] = role
    return roles


def sso_user(
    conn: sa.Connection, identity: SsoIdentity, settings: OidcSettings, *, audit: AuditTrail
) -> tuple[int, str]:
    """The id and name of the user ``identity`` signs in as (created if new and allowed), its
    mapped roles applied; :class:`OidcError` (403) when the person may not sign in. A user
    created and every role changed are recorded with ``audit``."""
    row = conn.execute(
        sa.select(users.c.id, users.c.name, users.c.disabled).where(
            users.c.oidc_issuer == identity.issuer, users.c.oidc_subject == identity.subject
        )
    ).first()
    if row is not None:
        if row.disabled:
            raise OidcError(f"the user {row.name!r} is disabled", 403)
        _apply_roles(conn, row.id, str(row.name), identity.roles, audit)
        return int(row.id), str(row.name)
    return _create(conn, identity, settings, audit)


def _create(
    conn: sa.Connection, identity: SsoIdentity, settings: OidcSettings, audit: AuditTrail
) -> tuple[int, str]:
    if not settings.create_users:
        raise OidcError("no user is linked to this sign-in, and users are not created by it", 403)
    roles = dict(identity.roles)
    if not roles and settings.default_role is not None:
        roles[settings.project] = PersonRole(settings.default_role)
    if not roles:
        raise OidcError(
            f"no role for this sign-in: the {settings.role_claim!r} claim maps to none", 403
        )
    if identity.name is None:
        raise OidcError(f"the ID token has no {settings.name_claim!r} claim to name a user", 403)
    try:
        name = check_user_name(identity.name)
    except UserError as exc:
        raise OidcError(str(exc), 403) from exc
    if find_user(conn, name) is not None:
        raise OidcError(
            f"a user named {name!r} already exists and is not linked to this sign-in", 403
        )
    (first_project, first_role), *others = roles.items()
    try:
        user = create_user(
            conn,
            name,
            password=None,
            role=first_role,
            project=first_project,
            email=identity.email,
            oidc_identity=(identity.issuer, identity.subject),
            audit=audit,
        )
    except (UserError, ValueError) as exc:
        raise OidcError(f"cannot create the user {name!r}: {exc}", 403) from exc
    _apply_roles(conn, user.id, user.name, dict(others), audit)
    return user.id, user.name


def _apply_roles(
    conn: sa.Connection, user_id: int, name: str, roles: dict[str, PersonRole], audit: AuditTrail
) -> None:
    held = {m.project_slug: m.role for m in memberships_of(conn, user_id)}
    for project, role in roles.items():
        project_id = ensure_project(conn, project)
        put_membership(conn, user_id, project_id, role)
        before = held.get(project)
        record_role(
            conn,
            audit,
            user_id=user_id,
            name=name,
            project_id=project_id,
            before=before,
            after=role,
        )
