"""Signing in with a name and password, and starting the session a sign-in earns.

Blocking (argon2 and the database): run it on a worker thread. The answer for a wrong
password, an unknown name and a disabled user is the same, in about the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from bastion.audit import AuditTrail
from bastion.auth.events import SignInEvent, sign_in_event
from bastion.auth.passwords import (
    hash_password,
    needs_rehash,
    verify_password,
    waste_a_verification,
)
from bastion.auth.sessions import NewSession, create_session, digest, revoke_session
from bastion.auth.throttle import Limits, begin_attempt, finish_attempt
from bastion.settings import AuthSettings
from bastion.store.schema import users
from bastion.store.transactions import run_write

__all__ = ["LoginOutcome", "password_login", "start_session"]


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A session (signed in), a wait (throttled), or neither (wrong name or password)."""

    user_name: str
    session: NewSession | None = None
    user_id: int | None = None
    retry_after_s: float | None = None


def _limits(settings: AuthSettings) -> Limits:
    return Limits(
        window_s=settings.login_window_s,
        per_user=settings.login_max_failures_per_user,
        per_address=settings.login_max_failures_per_address,
    )


def start_session(
    conn: sa.Connection,
    user_id: int,
    user_name: str,
    *,
    settings: AuthSettings,
    client_addr: str,
    user_agent: str | None,
    replaces: str | None,
    method: str,
    audit: AuditTrail,
) -> NewSession:
    """A new session for a person who just proved who they are. ``replaces``, the session id
    the browser presented, if any, is ended: it is never carried over into the new one. The
    sign-in is recorded with ``audit`` (its chain and request id; the actor is the person)."""
    if replaces:
        revoke_session(conn, digest(replaces))
    session = create_session(
        conn,
        user_id,
        lifetime_s=settings.session_absolute_s,
        client_addr=client_addr,
        user_agent=user_agent,
    )
    sign_in_event(
        conn,
        SignInEvent.SUCCEEDED,
        user_name=user_name,
        client_addr=client_addr,
        method=method,
        audit=audit,
    )
    return session


def password_login(
    engine: sa.Engine,
    name: str,
    password: str,
    *,
    settings: AuthSettings,
    client_addr: str,
    user_agent: str | None = None,
    replaces: str | None = None,
    audit: AuditTrail,
) -> LoginOutcome:
    """Check ``name`` and ``password`` under the throttle and start a session if they match;
    the outcome is recorded in the audit log with ``audit``'s chain and request id."""
    user_name = name.lower()[:200]
    limits = _limits(settings)

    def begin(conn: sa.Connection) -> tuple[int | None, float | None]:
        attempt, wait = begin_attempt(conn, user_name, client_addr, limits)
        if wait is not None:
            sign_in_event(
                conn,
                SignInEvent.THROTTLED,
                user_name=user_name,
                client_addr=client_addr,
                method="password",
                reason=f"too many failures; retry after {wait:.0f} s",
                audit=audit,
            )
        return attempt, wait

    attempt_id, wait = run_write(engine, begin)
    if attempt_id is None:
        return LoginOutcome(user_name, retry_after_s=wait)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(users.c.id, users.c.password_hash, users.c.disabled).where(
                users.c.name == user_name
            )
        ).first()
    if row is None or row.password_hash is None:
        waste_a_verification(password)
        matched = False
    else:
        matched = verify_password(row.password_hash, password)
    if row is None or not matched or row.disabled:
        reason = _failure_reason(row is None, matched, bool(row is not None and row.disabled))
        run_write(engine, lambda conn: _failed(conn, user_name, client_addr, reason, audit))
        return LoginOutcome(user_name)

    # Hashed before the transaction: the write lock is not held while argon2 works.
    rehashed = hash_password(password) if needs_rehash(row.password_hash) else None

    def finish(conn: sa.Connection) -> NewSession:
        finish_attempt(conn, attempt_id)
        if rehashed is not None:
            conn.execute(users.update().where(users.c.id == row.id).values(password_hash=rehashed))
        return start_session(
            conn,
            row.id,
            user_name,
            settings=settings,
            client_addr=client_addr,
            user_agent=user_agent,
            replaces=replaces,
            method="password",
            audit=audit,
        )

    return LoginOutcome(user_name, session=run_write(engine, finish), user_id=row.id)


def _failure_reason(unknown: bool, matched: bool, disabled: bool) -> str:
    # For the log and the audit only: the client always reads the same answer.
    if unknown:
        return "no such user, or no password set"
    if not matched:
        return "wrong password"
    return "user disabled" if disabled else "refused"


def _failed(
    conn: sa.Connection, user_name: str, client_addr: str, reason: str, audit: AuditTrail
) -> None:
    sign_in_event(
        conn,
        SignInEvent.FAILED,
        user_name=user_name,
        client_addr=client_addr,
        method="password",
        reason=reason,
        audit=audit,
    )
