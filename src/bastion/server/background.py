"""Blocking work on the default executor that shutdown can wait for.

Cancelling a task that awaits ``run_in_executor`` does not stop the thread: it keeps using its
database connection. If shutdown then disposes the engine, that connection is orphaned and
closed by the garbage collector. Work started through :class:`ThreadWork` is shielded from
cancellation and :meth:`ThreadWork.drain` waits for all of it before the engine goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ThreadWork"]

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
