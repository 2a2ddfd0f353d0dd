"""Creating and revoking API keys with their audit records, in the caller's transaction.

The key API and ``bastion keys`` change keys through these; :func:`bastion.auth.create_key`
and :func:`bastion.auth.revoke_key` are the bare row changes (kept for fixtures that seed a
database). A record names the key by id, name and role, never by its secret or prefix.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.auth.keys import CreatedKey, Role, create_key, ensure_project, revoke_key
from bastion.store.schema import api_keys, projects

__all__ = ["create", "revoke"]


def create(
    conn: sa.Connection, project: str, *, name: str, role: Role, audit: AuditTrail
) -> CreatedKey:
    """:func:`~bastion.auth.create_key`, recorded as ``key.create``."""
    created = create_key(conn, project, name=name, role=role)
    key = created.key
    audit.record(
        conn,
        "key.create",
        "api_key",
        str(key.id),
        project_id=ensure_project(conn, project),
        after={"name": key.name, "role": key.role.value, "revoked": False},
        details={"name": key.name[:200], "role": key.role.value},
    )
    return created


def revoke(
    conn: sa.Connection, key_id: int, *, project: str | None = None, audit: AuditTrail
) -> bool:
    """:func:`~bastion.auth.revoke_key`, recorded as ``key.revoke`` when a live key was revoked."""
    row = conn.execute(
        sa.select(api_keys.c.name, api_keys.c.role, api_keys.c.project_id)
        .join(projects, projects.c.id == api_keys.c.project_id)
        .where(
            api_keys.c.id == key_id,
            api_keys.c.revoked_at.is_(None),
            *(() if project is None else (projects.c.slug == project,)),
        )
    ).one_or_none()
    if row is None or not revoke_key(conn, key_id, project=project):
        return False
    audit.record(
        conn,
        "key.revoke",
        "api_key",
        str(key_id),
        project_id=int(row.project_id),
        before={"name": row.name, "role": row.role, "revoked": False},
        after={"name": row.name, "role": row.role, "revoked": True},
        details={"name": row.name[:200], "role": row.role},
    )
    return True
