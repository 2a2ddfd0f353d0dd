"""One exact ledger of rate limits and budgets for all worker processes of a host.

``bastion serve --workers N`` without Redis: the supervising parent process holds a
:class:`~bastion.gateway.limit_store.MemoryLimitStore` (rebuilt from the stored spans before
any worker starts) and serves it on a Unix socket from a thread with its own event loop
(:class:`LimitBroker`). Each worker's :class:`BrokerLimitStore` keeps one connection and sends
an admission as one frame, awaiting the answer on its event loop (no blocking call, no thread
hop); settlements are batched like Redis commits. The broker runs one message at a time on one
loop, so every check-and-reserve is atomic across the workers, exactly as in one process.

Frames are a 4-byte big-endian length and a JSON array ``[op, ...]``; answers come back in the
order the requests were sent on a connection. The socket lives in a fresh directory only this
user may enter (mode 0700), so no other local user can read or move the counters.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bastion.gateway.limit_store import (
    BudgetCheck,
    BudgetCommit,
    BudgetWarning,
    MemoryLimitStore,
    RateCheck,
    TokenCommit,
    Verdict,
)

__all__ = ["BrokerLimitStore", "LimitBroker"]

log = logging.getLogger("bastion.gateway")

_HEADER = struct.Struct("!I")
_MAX_FRAME = 16 * 1024 * 1024
_DRAIN_ABOVE = 1024 * 1024  # bytes buffered before a writer waits for the socket


def _frame(message: Any) -> bytes:
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > _MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the {_MAX_FRAME}-byte limit")
    return orjson.loads(await reader.readexactly(size))


class LimitBroker:
    """The host's ledger, served on a Unix socket from a background thread."""

    def __init__(self, store: MemoryLimitStore) -> None:
        self.store = store
        self._directory = Path(tempfile.mkdtemp(prefix="bastion-limits-"))  # mode 0700
        self.path = str(self._directory / "ledger.sock")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        """Listen on :attr:`path`; returns once workers can connect."""
        self._thread = threading.Thread(target=self._run, name="bastion-limits", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None or not self._ready.is_set():
            raise RuntimeError(f"the limits ledger did not start: {self._failure}")

    def stop(self) -> None:
        """Hang up on every worker and stop listening."""
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        shutil.rmtree(self._directory, ignore_errors=True)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_unix_server(self._serve, self.path)
            )
        except OSError as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        os.chmod(self.path, 0o600)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                message = await _read_frame(reader)
                writer.write(_frame(self.handle(message)))
                if writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a worker stopped; its open reservations stay counted (see docs)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            log.warning("limits ledger: dropping a connection that sent a bad frame: %s", exc)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    def handle(self, message: Sequence[Any]) -> Any:
        """Apply one request to the ledger; the answer to send back."""
        op = message[0]
        if op == "admit":
            rates = [RateCheck(str(k), rpm, tpm, int(t)) for k, rpm, tpm, t in message[1]]
            budgets = [
                BudgetCheck(str(k), float(limit), float(reserve), int(ttl), bool(force))
                for k, limit, reserve, ttl, force in message[2]
            ]
            v = self.store.admit_now(rates, budgets, float(message[3]))
            return [v.ok, v.window, v.rate_denied, v.rate_load, v.exceeded, v.spent]
        if op == "commit":
            commits = [
                BudgetCommit(str(k), float(limit), float(reserved), float(actual), int(ttl))
                for k, limit, reserved, actual, ttl in message[1]
            ]
            tokens = [TokenCommit(str(k), int(w), int(d)) for k, w, d in message[2]]
            warnings = self.store.commit_now(commits, tokens)
            return [[w.key, w.threshold, w.spent, w.limit] for w in warnings]
        if op == "add":
            for key, amount, ttl_s in message[1]:
                self.store.add_spend(str(key), float(amount), int(ttl_s))
            return None
        if op == "ping":
            return "pong"
        raise ValueError(f"unknown operation {op!r}")


class BrokerLimitStore:
    """A worker's view of the host ledger: :class:`LimitStore` over one Unix connection.

    A lost connection fails the calls waiting on it (the caller falls back to memory); the next
    call connects again.
    """

    def __init__(self, path: str, *, timeout_s: float = 0.5) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def admit(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], now: float
    ) -> Verdict:
        """Check every limit; count and reserve only if all pass (one round trip)."""
        reply = await self._call(
            [
                "admit",
                [[c.key, c.rpm, c.tpm, c.tokens] for c in rates],
                [[b.key, b.limit, b.reserve, b.ttl_s, b.force] for b in budgets],
                now,
            ]
        )
        ok, window, denied, load, exceeded, spent = reply
        return Verdict(bool(ok), int(window), denied, tuple(load), tuple(exceeded), tuple(spent))

    async def commit(
        self, budgets: Sequence[BudgetCommit], tokens: Sequence[TokenCommit]
    ) -> list[BudgetWarning]:
        """Settle a batch of finished requests in one round trip."""
        if not budgets and not tokens:
            return []
        reply = await self._call(
            [
                "commit",
                [[b.key, b.limit, b.reserved, b.actual, b.ttl_s] for b in budgets],
                [[t.key, t.window, t.delta] for t in tokens],
            ]
        )
        return [BudgetWarning(k, float(t), float(s), float(lim)) for k, t, s, lim in reply]

    async def add_spend(self, amounts: Sequence[tuple[str, float, int]]) -> None:
        if amounts:
            await self._call(["add", [list(a) for a in amounts]])

    async def ping(self) -> None:
        await self._call(["ping"])

    async def reset(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        self._fail_waiting(ConnectionError("the limits ledger connection was closed"))

    async def _call(self, message: list[Any]) -> Any:
        writer = self._writer if self._writer is not None else await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        writer.write(_frame(message))
        if writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await writer.drain()
        # A timed-out call cancels its future; the late answer is still matched in order and
        # dropped.
        return await asyncio.wait_for(future, self.timeout_s)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path), self.timeout_s
                )
                self._writer = writer
                self._reader_task = asyncio.create_task(self._read(reader, writer))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                reply = await _read_frame(reader)
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError) as exc:
            if self._writer is writer:
                self._writer = None
            writer.close()
            self._fail_waiting(ConnectionError(f"the limits ledger went away: {exc!r}"))

    def _fail_waiting(self, error: BaseException) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
