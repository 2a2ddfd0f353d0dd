"""Sessions held in memory for a short time, so a browser's requests rarely cost a database
round trip.

A session read from the database is trusted for ``cache_s`` seconds (``auth.session_cache_s``)
and then read again: a sign-out, a disabled user or a changed role made by another process (the
CLI, another worker, another replica) reaches this one within that bound. A change made in this
process calls :meth:`SessionCache.forget` or :meth:`SessionCache.forget_user` and counts from
the next request. Expiry (idle and absolute) is checked on every request, cached or not.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from bastion.auth.sessions import ActiveSession, digest, load_session, touch_session
from bastion.store.transactions import run_write

__all__ = ["SessionCache"]


@dataclass(frozen=True, slots=True)
class _Entry:
    session: ActiveSession
    read_at: float  # monotonic


class SessionCache:
    """Resolves session ids (cookie values) to live sessions; see the module's notes."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        idle_s: float,
        cache_s: float,
        max_entries: int = 10_000,
    ) -> None:
        self.engine = engine
        self.idle_s = idle_s
        self.cache_s = cache_s
        self.max_entries = max_entries
        # The last use is written at most this often: idle expiry is that much less precise.
        self.touch_after_s = min(60.0, idle_s / 10)
        # Touched only on the event loop's thread: no lock.
        self._entries: dict[str, _Entry] = {}

    async def resolve(self, session_id: str) -> ActiveSession | None:
        """The live session for the cookie value ``session_id``, or None. Raises
        SQLAlchemyError when the database must be read and cannot be."""
        id_hash = digest(session_id)
        now = datetime.now(UTC)
        entry = self._entries.get(id_hash)
        if entry is not None and time.monotonic() - entry.read_at < self.cache_s:
            if entry.session.is_live(now, self.idle_s):
                return entry.session
            self._entries.pop(id_hash, None)
            return None
        session = await asyncio.get_running_loop().run_in_executor(None, self._load, id_hash)
        if session is None:
            self._entries.pop(id_hash, None)
            return None
        self._remember(session)
        return session

    def _load(self, id_hash: str) -> ActiveSession | None:
        with self.engine.connect() as conn:
            session = load_session(conn, id_hash, idle_s=self.idle_s)
        if session is None:
            return None
        if (datetime.now(UTC) - session.last_seen_at).total_seconds() < self.touch_after_s:
            return session
        # Not on every request: reads stay reads, and the idle expiry is that much less precise.
        return run_write(self.engine, lambda conn: touch_session(conn, session))

    def _remember(self, session: ActiveSession) -> None:
        if self.cache_s <= 0:
            return
        while len(self._entries) >= self.max_entries:
            # Oldest read first (dicts keep insertion order; a re-read re-inserts).
            self._entries.pop(next(iter(self._entries)))
        self._entries.pop(session.id_hash, None)
        self._entries[session.id_hash] = _Entry(session, time.monotonic())

    def forget(self, session_id: str) -> None:
        """Drop one session (signed out in this process)."""
        self._entries.pop(digest(session_id), None)

    def forget_user(self, user_id: int) -> None:
        """Drop every session of ``user_id`` (disabled, new password or roles changed here)."""
        for id_hash in [h for h, e in self._entries.items() if e.session.user_id == user_id]:
            del self._entries[id_hash]
