"""An aiohttp application served on a loopback port from a thread of its own.

For a process whose main thread is busy with something else — a test, a benchmark driving
load, a notebook — the application gets its own event loop in a daemon thread; its start-up
and clean-up (``cleanup_ctx``) run there as under ``bastion serve``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["ThreadedServer", "serve_in_thread"]


@dataclass
class ThreadedServer:
    """A running application: its base URL, and :meth:`stop` to shut it down cleanly."""

    url: str
    port: int
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the loop, run the application's clean-up, and wait for the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)


def serve_in_thread(
    runner: web.AppRunner | web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    start_timeout_s: float = 30,
) -> ThreadedServer:
    """Serve ``runner`` (or an application, with a default runner) on ``host``:``port`` (0: a
    free port) from a new thread; returns once it accepts connections.

    Raises:
        RuntimeError: the application did not start within ``start_timeout_s`` (its start-up
            error, when there was one, is the cause).
    """
    if isinstance(runner, web.Application):
        runner = web.AppRunner(runner)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    bound: list[int] = []
    failure: list[BaseException] = []

    async def boot() -> None:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(boot())
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which raises it
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())  # what did start is shut down again
            loop.close()
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="bastion-threaded-server", daemon=True)
    thread.start()
    if not started.wait(start_timeout_s) or failure:
        cause = failure[0] if failure else None
        raise RuntimeError(f"the application did not start on {host}") from cause
    url_host = f"[{host}]" if ":" in host else host
    return ThreadedServer(f"http://{url_host}:{bound[0]}", bound[0], loop, thread)
