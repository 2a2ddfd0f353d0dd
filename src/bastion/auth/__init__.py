"""Projects, project-scoped API keys (stored hashed) and roles."""

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

__all__ = [
    "DEFAULT_PROJECT",
    "ApiKey",
    "AuthError",
    "CreatedKey",
    "KeyCache",
    "Principal",
    "Role",
    "create_key",
    "ensure_project",
    "hash_key",
    "list_keys",
    "revoke_key",
]
