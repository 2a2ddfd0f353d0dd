"""Login throttling: too many failed sign-ins for one user name, or from one client address,
within a window are refused until the oldest of them leaves the window.

Attempts are rows of ``login_attempts``, so every server process and replica counts the same
ones. An attempt is written *before* its password is checked, as a failure, and turned into
a success afterwards: a burst of parallel guesses cannot all pass the check before any of
them is counted. Writers of one user name or one address take turns (SQLite's write lock;
PostgreSQL advisory locks), so the count and the new row agree.

A success clears the count of its user name (only the password can do that) but not the
count of its address: signing in to one's own account must not buy more guesses at others.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bastion.store.schema import login_attempts

__all__ = ["Limits", "begin_attempt", "finish_attempt", "retry_after"]

# Column widths of login_attempts.
_NAME_WIDTH = 200
_ADDR_WIDTH = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """How many failures within ``window_s`` a user name and an address may have."""

    window_s: float
    per_user: int
    per_address: int


def _lock(conn: sa.Connection, what: str) -> None:
    """Take a transaction-scoped lock on ``what`` (PostgreSQL; SQLite's write lock serves)."""
    if conn.dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(what.encode()).digest()[:8], "big", signed=True)
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def _retry(failures: list[datetime], limit: int, window: timedelta, now: datetime) -> float:
    """Seconds until fewer than ``limit`` of ``failures`` (newest first) lie in the window."""
    if len(failures) < limit:
        return 0.0
    return (failures[limit - 1] + window - now).total_seconds()


def retry_after(
    conn: sa.Connection, user_name: str, client_addr: str, limits: Limits, now: datetime
) -> float | None:
    """Seconds (at least 1) until this user name and address may try again; None if now."""
    window = timedelta(seconds=limits.window_s)
    since = now - window
    user_name, client_addr = user_name[:_NAME_WIDTH], client_addr[:_ADDR_WIDTH]
    last_success = conn.execute(
        sa.select(sa.func.max(login_attempts.c.at)).where(
            login_attempts.c.user_name == user_name,
            login_attempts.c.succeeded.is_(True),
            login_attempts.c.at >= since,
        )
    ).scalar()
    user_since = max(since, last_success) if last_success is not None else since
    by_user = _failures(conn, login_attempts.c.user_name == user_name, user_since, limits.per_user)
    by_addr = _failures(
        conn, login_attempts.c.client_addr == client_addr, since, limits.per_address
    )
    wait = max(
        _retry(by_user, limits.per_user, window, now),
        _retry(by_addr, limits.per_address, window, now),
    )
    return float(max(1, math.ceil(wait))) if wait > 0 else None


def _failures(
    conn: sa.Connection, who: sa.ColumnElement[bool], since: datetime, limit: int
) -> list[datetime]:
    rows = conn.execute(
        sa.select(login_attempts.c.at)
        .where(who, login_attempts.c.succeeded.is_(False), login_attempts.c.at > since)
        .order_by(login_attempts.c.at.desc())
        .limit(limit)
    ).scalars()
    return list(rows)


def begin_attempt(
    conn: sa.Connection, user_name: str, client_addr: str, limits: Limits
) -> tuple[int | None, float | None]:
    """In a write transaction: the id of a new attempt row (a failure until
    :func:`finish_attempt`) and None, or None and the seconds to wait when throttled."""
    user_name, client_addr = user_name[:_NAME_WIDTH], client_addr[:_ADDR_WIDTH]
    # Always the name before the address: two attempts never wait on each other in a cycle.
    _lock(conn, f"login user {user_name}")
    _lock(conn, f"login address {client_addr}")
    now = datetime.now(UTC)
    wait = retry_after(conn, user_name, client_addr, limits, now)
    if wait is not None:
        return None, wait
    result = conn.execute(
        login_attempts.insert().values(
            user_name=user_name, client_addr=client_addr, succeeded=False, at=now
        )
    )
    return int(result.inserted_primary_key[0]), None  # type: ignore[index]


def finish_attempt(conn: sa.Connection, attempt_id: int) -> None:
    """Mark the attempt ``attempt_id`` a success."""
    conn.execute(
        login_attempts.update().where(login_attempts.c.id == attempt_id).values(succeeded=True)
    )
