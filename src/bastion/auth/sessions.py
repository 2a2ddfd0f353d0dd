"""Browser sessions in the database.

A session id is 256 random bits, given to the browser in a cookie and stored only as its
SHA-256: a reader of the database cannot sign in with what it finds there. Every login makes a
new id, so an id planted in a browser before login is never the one that gets signed in.

Each session has a CSRF token, derived from its id by HMAC (so the server can hand it out
again at ``/api/v1/me`` without keeping it) and also stored only as its SHA-256. A session ends
when revoked (logout, its user disabled or given a new password), when unused for the idle
time, or at its absolute expiry, whichever comes first.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bastion.auth.memberships import Membership, memberships_of
from bastion.store.schema import user_sessions, users

__all__ = [
    "ActiveSession",
    "NewSession",
    "create_session",
    "csrf_matches",
    "csrf_token_for",
    "digest",
    "load_session",
    "revoke_session",
    "revoke_user_sessions",
    "touch_session",
]

_CSRF_CONTEXT = b"bastion csrf token v1"


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session just created: ``session_id`` and ``csrf_token`` exist only here and in the
    browser (the database keeps their digests)."""

    session_id: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """A live session with its user and the user's roles, as read from the database."""

    id_hash: str
    user_id: int
    user_name: str
    email: str | None
    csrf_hash: str
    last_seen_at: datetime
    expires_at: datetime
    memberships: tuple[Membership, ...]

    def is_live(self, now: datetime, idle_s: float) -> bool:
        """Neither past its absolute expiry nor idle for longer than ``idle_s``."""
        return now < self.expires_at and now - self.last_seen_at < timedelta(seconds=idle_s)


def digest(secret: str) -> str:
    """The SHA-256 hex digest under which a session id or a CSRF token is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token_for(session_id: str) -> str:
    """The CSRF token of the session whose id is ``session_id``."""
    mac = hmac.new(session_id.encode(), _CSRF_CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_matches(session: ActiveSession, token: str) -> bool:
    """Whether ``token`` is this session's CSRF token (compared in constant time)."""
    return hmac.compare_digest(digest(token), session.csrf_hash)


def create_session(
    conn: sa.Connection,
    user_id: int,
    *,
    lifetime_s: float,
    client_addr: str | None,
    user_agent: str | None,
) -> NewSession:
    """A new session for ``user_id`` that ends ``lifetime_s`` from now at the latest."""
    session_id = secrets.token_urlsafe(32)
    csrf_token = csrf_token_for(session_id)
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=lifetime_s)
    conn.execute(
        user_sessions.insert().values(
            id_hash=digest(session_id),
            user_id=user_id,
            csrf_hash=digest(csrf_token),
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
            client_addr=(client_addr or "")[:64] or None,
            user_agent=(user_agent or "")[:500] or None,
        )
    )
    return NewSession(session_id, csrf_token, expires_at)


def load_session(conn: sa.Connection, id_hash: str, *, idle_s: float) -> ActiveSession | None:
    """The live session stored under ``id_hash``, its user enabled; None otherwise."""
    row = conn.execute(
        sa.select(user_sessions, users.c.name, users.c.email)
        .join(users, users.c.id == user_sessions.c.user_id)
        .where(
            user_sessions.c.id_hash == id_hash,
            user_sessions.c.revoked_at.is_(None),
            users.c.disabled.is_(False),
        )
    ).first()
    if row is None:
        return None
    session = ActiveSession(
        id_hash=id_hash,
        user_id=row.user_id,
        user_name=row.name,
        email=row.email,
        csrf_hash=row.csrf_hash,
        last_seen_at=row.last_seen_at,
        expires_at=row.expires_at,
        memberships=memberships_of(conn, row.user_id),
    )
    return session if session.is_live(datetime.now(UTC), idle_s) else None


def touch_session(conn: sa.Connection, session: ActiveSession) -> ActiveSession:
    """Record that ``session`` is in use now (its idle expiry starts again)."""
    now = datetime.now(UTC)
    conn.execute(
        user_sessions.update()
        .where(user_sessions.c.id_hash == session.id_hash, user_sessions.c.last_seen_at < now)
        .values(last_seen_at=now)
    )
    return dataclasses.replace(session, last_seen_at=now)


def revoke_session(conn: sa.Connection, id_hash: str) -> int | None:
    """End the session stored under ``id_hash``; its user's id, or None if it was not live."""
    user_id = conn.execute(
        sa.select(user_sessions.c.user_id).where(
            user_sessions.c.id_hash == id_hash, user_sessions.c.revoked_at.is_(None)
        )
    ).scalar()
    if user_id is None:
        return None
    conn.execute(
        user_sessions.update()
        .where(user_sessions.c.id_hash == id_hash)
        .values(revoked_at=datetime.now(UTC))
    )
    return int(user_id)


def revoke_user_sessions(conn: sa.Connection, user_id: int) -> int:
    """End every live session of ``user_id``; how many there were."""
    result = conn.execute(
        user_sessions.update()
        .where(user_sessions.c.user_id == user_id, user_sessions.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return int(result.rowcount)
