"""Blocking work on the default executor that shutdown can wait for.

Cancelling a task that awaits ``run_in_executor`` does not stop the thread: it keeps using its
database connection. If shutdown then disposes the engine, that connection is orphaned and
closed by the garbage collector. Work started through :class:`ThreadWork` is shielded from
cancellation and :meth:`ThreadWork.drain` waits for all of it before the engine goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa

__all__ = ["SingleFlight", "ThreadWork", "poll"]

_T = TypeVar("_T")


def _retrieve(future: asyncio.Future[Any]) -> None:
    # The awaiting task may have been cancelled: nobody else will look at the outcome.
    if not future.cancelled():
        future.exception()


class ThreadWork:
    """Runs callables on the loop's default executor and remembers the unfinished ones."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        work: asyncio.Future[_T] = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._pending.add(work)
        work.add_done_callback(self._pending.discard)
        work.add_done_callback(_retrieve)
        return await asyncio.shield(work)

    async def drain(self) -> None:
        """Wait until every started callable has returned (their results are dropped)."""
        while self._pending:
            await asyncio.wait(set(self._pending))


class SingleFlight:
    """Concurrent callers of :meth:`run` share one execution: the first starts it, the others
    wait for its outcome (its exception too) instead of starting another."""

    def __init__(self) -> None:
        self._inflight: asyncio.Future[None] | None = None

    @property
    def busy(self) -> bool:
        """True while an execution is in progress."""
        return self._inflight is not None

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = future = asyncio.get_running_loop().create_future()
        try:
            await work()
            future.set_result(None)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it, nobody else must
            raise
        finally:
            self._inflight = None


async def poll(
    refresh: Callable[[], Awaitable[None]],
    interval_s: float,
    log: logging.Logger,
    what: str,
) -> None:
    """Call ``refresh`` every ``interval_s`` until cancelled; a failed refresh (database away,
    bad row) is logged and the caller keeps serving what it already holds."""
    while True:
        try:
            await refresh()
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            log.warning("could not refresh %s (serving the cached ones): %s", what, exc)
        await asyncio.sleep(interval_s)
