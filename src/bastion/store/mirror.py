"""An in-memory mirror of database tables, kept fresh by polling a change marker.

The gateway's prompt cache and the releases route table both serve requests from memory with
no database trip. Each is a :class:`TableMirror` that:

* reads a cheap change ``marker`` on a worker thread every ``refresh_s`` and, only when it
  differs from the marker of the last load, ``load`` s the new state on the same connection;
* hands the loaded state to ``apply`` on the event loop, so a request sees one consistent
  snapshot and never a half-applied one;
* shares one reload among concurrent callers (single flight);
* on a lookup miss, refreshes once more before the caller answers "not found" (at most every
  ``miss_refresh_s``, coalesced with any reload in flight), so a row written a moment ago is
  found;
* runs its thread work through a :class:`ThreadWork` that shutdown drains before the engine
  is disposed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import sqlalchemy as sa

from bastion.runtime.background import SingleFlight, ThreadWork, poll

__all__ = ["TableMirror"]

_M = TypeVar("_M")
_D = TypeVar("_D")


class TableMirror(Generic[_M, _D]):
    """Polls ``marker(conn)``; when it moved, ``load(conn, marker)`` on the worker thread and
    ``apply(loaded)`` on the loop. ``what`` names the mirrored tables in log lines."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        marker: Callable[[sa.Connection], _M],
        load: Callable[[sa.Connection, _M], _D],
        apply: Callable[[_D], None],
        what: str,
        log: logging.Logger,
        refresh_s: float = 1.0,
        miss_refresh_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.work = ThreadWork()  # drained at shutdown, before the engine is disposed
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self.loaded = False
        self._read_marker = marker
        self._load = load
        self._apply = apply
        self._what = what
        self._log = log
        self._marker: _M | None = None  # the marker of the last load; None: nothing loaded
        self._flight = SingleFlight()
        self._last_miss_refresh = -math.inf  # the monotonic clock starts near 0 at boot

    @property
    def busy(self) -> bool:
        """True while a reload is in flight."""
        return self._flight.busy

    def _refresh_sync(self, last: _M | None) -> tuple[_M, _D] | None:
        with self.engine.connect() as conn:
            current = self._read_marker(conn)
            if last is not None and current == last:
                return None
            return current, self._load(conn, current)

    async def refresh(self) -> None:
        """Reload when the marker moved; concurrent callers share one reload."""
        await self._flight.run(self._reload)

    async def _reload(self) -> None:
        loaded = await self.work.run(self._refresh_sync, self._marker)
        if loaded is not None:
            marker, state = loaded
            self._apply(state)  # on the loop: readers never see a half-applied state
            self._marker = marker
        self.loaded = True

    async def run(self) -> None:
        """Poll every ``refresh_s`` until cancelled; a failed poll keeps the current state."""
        await poll(self.refresh, self.refresh_s, self._log, self._what)

    async def refresh_on_miss(self) -> None:
        """One coalesced refresh for a lookup that missed: joins a reload in flight, else
        starts one unless the last miss did less than ``miss_refresh_s`` ago. A failure is
        logged (the caller answers from what it holds)."""
        now = time.monotonic()
        if now - self._last_miss_refresh <= self.miss_refresh_s and not self._flight.busy:
            return
        if not self._flight.busy:
            self._last_miss_refresh = now
        try:
            await self.refresh()
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            self._log.warning("could not refresh %s on a miss: %s", self._what, exc)
