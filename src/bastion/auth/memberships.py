"""A person's role in each project (table ``memberships``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from bastion.auth.roles import PersonRole
from bastion.store.schema import memberships, projects

__all__ = ["Membership", "memberships_of", "put_membership"]


@dataclass(frozen=True, slots=True)
class Membership:
    """A person's role in one project."""

    project_id: int
    project_slug: str
    role: PersonRole


def memberships_of(conn: sa.Connection, user_id: int) -> tuple[Membership, ...]:
    """The user's role in each project, in the order the projects were created."""
    rows = conn.execute(
        sa.select(projects.c.id, projects.c.slug, memberships.c.role)
        .join(projects, projects.c.id == memberships.c.project_id)
        .where(memberships.c.user_id == user_id)
        .order_by(projects.c.id)
    ).all()
    return tuple(Membership(row.id, row.slug, PersonRole(row.role)) for row in rows)


def put_membership(conn: sa.Connection, user_id: int, project_id: int, role: PersonRole) -> None:
    """Give the user ``role`` in the project, replacing the role they had there."""
    where = sa.and_(memberships.c.user_id == user_id, memberships.c.project_id == project_id)
    changed = conn.execute(memberships.update().where(where).values(role=role.value)).rowcount
    if not changed:
        conn.execute(
            memberships.insert().values(
                user_id=user_id,
                project_id=project_id,
                role=role.value,
                created_at=datetime.now(UTC),
            )
        )
