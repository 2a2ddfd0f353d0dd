"""The roles a person holds in a project, and the roles of API keys.

What each role may do is one table, :data:`bastion.auth.permissions.PERMISSIONS`.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PersonRole", "Role"]


class Role(StrEnum):
    """What a key may do within its project (see the permission table)."""

    ADMIN = "admin"  # everything a key may do, including managing keys
    WRITE = "write"  # ingest, gateway calls, pushes, releases and rollouts, read
    INGEST = "ingest"  # ingest only: for exporters on untrusted hosts
    READ = "read"  # read API only


class PersonRole(StrEnum):
    """A person's role in one project (table ``memberships``)."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """Higher is more: when two sources grant roles in one project, the higher one wins."""
        return _RANKS[self]


_RANKS = {PersonRole.VIEWER: 0, PersonRole.MEMBER: 1, PersonRole.ADMIN: 2, PersonRole.OWNER: 3}
