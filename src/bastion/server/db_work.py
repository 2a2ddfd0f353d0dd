"""Database work for the API route modules: on a worker thread (never on the event loop), the
module's own errors turned into API errors, and the acting key's name for change records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from aiohttp import web

from bastion.auth import Principal
from bastion.server.openapi import ApiError
from bastion.services.state import STATE
from bastion.store.schema import api_keys
from bastion.store.transactions import run_write

__all__ = ["DB", "DbWork", "key_actor"]

_T = TypeVar("_T")


def _unexpected(exc: Exception) -> ApiError:
    # Only reached for an ``expected`` type, and the plain DbWork expects none.
    raise exc


@dataclass(frozen=True, slots=True)
class DbWork:
    """How one route module runs database work: ``expected`` errors (the domain's, with a
    message for the client) become the :class:`ApiError` that ``to_api`` makes of them;
    anything else propagates (a 500). The shared :data:`DB` expects nothing: its callers
    handle their own errors."""

    expected: tuple[type[Exception], ...] = ()
    to_api: Callable[[Exception], ApiError] = _unexpected

    async def run(self, work: Callable[[], _T]) -> _T:
        """``work()`` on the default thread pool."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        except self.expected as exc:
            raise self.to_api(exc) from exc

    async def read(self, request: web.Request, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` on one connection of the app's engine."""
        engine = request.app[STATE].engine

        def run() -> _T:
            with engine.connect() as conn:
                return work(conn)

        return await self.run(run)

    async def write(self, request: web.Request, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` in one write transaction, retried whole on a lost race."""
        engine = request.app[STATE].engine
        return await self.run(lambda: run_write(engine, work))

    async def transaction(self, request: web.Request, work: Callable[[sa.Connection], _T]) -> _T:
        """``work(conn)`` in one transaction, not retried (for work that must run once)."""
        engine = request.app[STATE].engine

        def run() -> _T:
            with engine.begin() as conn:
                return work(conn)

        return await self.run(run)


DB = DbWork()


def key_actor(conn: sa.Connection, principal: Principal) -> str:
    """Who acts: the key's name and id (names are not unique, ids are); a signed-in person as
    ``user:<name>``."""
    if principal.key_id is None:
        return principal.actor
    name = conn.execute(
        sa.select(api_keys.c.name).where(api_keys.c.id == principal.key_id)
    ).scalar()
    return f"{name or 'key'} (key {principal.key_id})"[:200]
