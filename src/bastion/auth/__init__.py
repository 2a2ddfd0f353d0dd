"""Projects, project-scoped API keys (stored hashed), people (users, roles, sessions, single
sign-on) and the principal a request acts as."""

from bastion.auth.keys import (
    DEFAULT_PROJECT,
    ApiKey,
    AuthError,
    CreatedKey,
    KeyCache,
    Principal,
    Role,
    create_key,
    ensure_project,
    hash_key,
    list_keys,
    revoke_key,
)
from bastion.auth.permissions import Permission
from bastion.auth.roles import PersonRole

__all__ = [
    "DEFAULT_PROJECT",
    "ApiKey",
    "AuthError",
    "CreatedKey",
    "KeyCache",
    "Permission",
    "PersonRole",
    "Principal",
    "Role",
    "create_key",
    "ensure_project",
    "hash_key",
    "list_keys",
    "revoke_key",
]
