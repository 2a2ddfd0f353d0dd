"""Projects, project-scoped API keys and the principal a request acts as.

A key is shown once, at creation; the database keeps only its SHA-256. Request handlers
verify keys against an in-memory cache (:class:`KeyCache`) so authentication never costs a
database round trip on the hot path; revocations reach the cache within ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from bastion import names
from bastion.auth.permissions import PERMISSIONS, Permission, holds
from bastion.auth.roles import PersonRole, Role
from bastion.store.schema import api_keys, projects

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

DEFAULT_PROJECT = "default"
KEY_PREFIX = "bst_"


class AuthError(Exception):
    """The request carries no valid key, or the key may not do what was asked."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


# The key role nearest a person's, for code that still asks a key role (``Principal.role``);
# what a person may do is decided by their own role (see bastion.auth.permissions).
_PERSON_AS_KEY_ROLE: dict[PersonRole, Role] = {
    PersonRole.OWNER: Role.ADMIN,
    PersonRole.ADMIN: Role.ADMIN,
    PersonRole.MEMBER: Role.WRITE,
    PersonRole.VIEWER: Role.READ,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, in one project: an API key with its role, or a signed-in person with
    theirs (``user_id``, ``user_name`` and ``person_role`` set, ``key_id`` None). What the
    caller may do comes from the permission table: for a person from ``person_role``, for a
    key from ``role``; a person's ``role`` is the nearest key role, for code that asks one."""

    project_id: int
    project_slug: str
    key_id: int | None
    role: Role
    user_id: int | None = None
    user_name: str | None = None
    person_role: PersonRole | None = None

    @classmethod
    def person(
        cls, project_id: int, project_slug: str, user_id: int, user_name: str, role: PersonRole
    ) -> Principal:
        """A signed-in person acting in one project with their role there."""
        return cls(
            project_id=project_id,
            project_slug=project_slug,
            key_id=None,
            role=_PERSON_AS_KEY_ROLE[role],
            user_id=user_id,
            user_name=user_name,
            person_role=role,
        )

    @property
    def actor(self) -> str:
        """Who acts, for change records: ``user:<name>`` or ``key:<id>``."""
        if self.user_name is not None:
            return f"user:{self.user_name}"
        return f"key:{self.key_id}"

    @property
    def is_person(self) -> bool:
        """A signed-in person (else an API key)."""
        return self.person_role is not None

    def can(self, permission: Permission) -> bool:
        """Whether the caller's role holds ``permission``."""
        return holds(self.person_role if self.person_role is not None else self.role, permission)

    def require(self, permission: Permission) -> None:
        """A 403 :class:`AuthError` naming the role and the permission it lacks."""
        if self.can(permission):
            return
        what = f"{permission.value!r} ({PERMISSIONS[permission].allows})"
        if self.person_role is not None:
            raise AuthError(
                f"user {self.user_name!r} has the role {self.person_role.value!r} in project "
                f"{self.project_slug!r}, which does not grant {what}",
                status=403,
            )
        raise AuthError(f"this key's role {self.role.value!r} does not grant {what}", status=403)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    project_slug: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key; ``secret`` is the only copy of the full key and is never stored."""

    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _check_slug(slug: str) -> None:
    names.PROJECT.check(slug)  # an InvalidName, which is a ValueError


def ensure_project(conn: sa.Connection, slug: str = DEFAULT_PROJECT) -> int:
    """Return the id of project ``slug``, creating it if needed."""
    _check_slug(slug)
    found = conn.execute(sa.select(projects.c.id).where(projects.c.slug == slug)).scalar()
    if found is not None:
        return int(found)
    result = conn.execute(projects.insert().values(slug=slug, name=slug, created_at=_now()))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def create_key(
    conn: sa.Connection, project: str, *, name: str = "default", role: Role = Role.ADMIN
) -> CreatedKey:
    """Create a key for ``project`` (created too if new) and return its only plain-text copy."""
    project_id = ensure_project(conn, project)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    created = _now()
    result = conn.execute(
        api_keys.insert().values(
            project_id=project_id,
            name=name,
            prefix=secret[:12],
            key_hash=hash_key(secret),
            role=role.value,
            created_at=created,
        )
    )
    key_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    key = ApiKey(key_id, project, name, secret[:12], role, created, None)
    return CreatedKey(key=key, secret=secret)


def list_keys(conn: sa.Connection, project: str | None = None) -> list[ApiKey]:
    """Keys (never their secrets), optionally of one project, oldest first."""
    query = (
        sa.select(api_keys, projects.c.slug)
        .join(projects, projects.c.id == api_keys.c.project_id)
        .order_by(api_keys.c.id)
    )
    if project is not None:
        query = query.where(projects.c.slug == project)
    return [
        ApiKey(
            row.id, row.slug, row.name, row.prefix, Role(row.role), row.created_at, row.revoked_at
        )
        for row in conn.execute(query)
    ]


def revoke_key(conn: sa.Connection, key_id: int, *, project: str | None = None) -> bool:
    """Revoke key ``key_id`` (only within ``project`` when given); False if no such live key."""
    condition = sa.and_(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
    if project is not None:
        project_ids = sa.select(projects.c.id).where(projects.c.slug == project)
        condition = sa.and_(condition, api_keys.c.project_id.in_(project_ids.scalar_subquery()))
    result = conn.execute(api_keys.update().where(condition).values(revoked_at=_now()))
    return result.rowcount > 0


class KeyCache:
    """Resolves presented keys to principals from memory, refreshed from the database.

    The full table of live key hashes is small (one row per key), so it is reloaded whole
    every ``refresh_s`` seconds off the request path; an unknown key triggers at most one
    early reload per ``miss_reload_s`` so a key created a moment ago works at once.
    """

    def __init__(self, engine: sa.Engine, *, refresh_s: float = 5.0, miss_reload_s: float = 1.0):
        self.engine = engine
        self.refresh_s = refresh_s
        self.miss_reload_s = miss_reload_s
        self._by_hash: dict[str, Principal] = {}
        self._loaded_at = -math.inf  # the monotonic clock starts near 0 at boot
        self._miss_reload_at = -math.inf
        self._miss_reload: asyncio.Future[None] | None = None
        self._lock = threading.Lock()

    def reload(self) -> None:
        query = (
            sa.select(
                api_keys.c.id, api_keys.c.key_hash, api_keys.c.role, projects.c.id, projects.c.slug
            )
            .join(projects, projects.c.id == api_keys.c.project_id)
            .where(api_keys.c.revoked_at.is_(None))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        table = {
            row[1]: Principal(
                project_id=row[3], project_slug=row[4], key_id=row[0], role=Role(row[2])
            )
            for row in rows
        }
        with self._lock:
            self._by_hash = table
            self._loaded_at = time.monotonic()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at > self.refresh_s

    def lookup(self, secret: str) -> Principal | None:
        """The principal for ``secret`` from memory only; None if unknown or revoked."""
        return self._by_hash.get(hash_key(secret))

    async def lookup_or_reload(self, secret: str) -> Principal | None:
        """:meth:`lookup`, and on a miss one reload off the event loop (a key created a moment
        ago, or by another replica). Every request that misses while that reload runs waits for
        it rather than being refused; a new reload starts at most once per ``miss_reload_s``.
        Raises what the reload raised (the database is down)."""
        principal = self.lookup(secret)
        if principal is not None:
            return principal
        if self._miss_reload is None:
            if not self.may_reload_on_miss():
                return None
            reload = asyncio.get_running_loop().run_in_executor(None, self.reload)
            self._miss_reload = reload
            reload.add_done_callback(self._miss_reload_done)
        await asyncio.shield(self._miss_reload)
        return self.lookup(secret)

    def _miss_reload_done(self, future: asyncio.Future[None]) -> None:
        self._miss_reload = None
        if not future.cancelled():
            future.exception()  # retrieved here: a waiter may have been cancelled

    def may_reload_on_miss(self) -> bool:
        """True at most once per ``miss_reload_s``: unknown keys cannot storm the database."""
        now = time.monotonic()
        with self._lock:
            if now - self._miss_reload_at < self.miss_reload_s:
                return False
            self._miss_reload_at = now
            return True
