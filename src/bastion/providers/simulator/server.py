"""Running the simulator: in a background thread (tests, ``serve --with-simulator``) or in
the foreground (``bastion simulate``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from bastion.providers.simulator.app import create_simulator_app
from bastion.providers.simulator.config import SimulatorConfig

__all__ = ["SimulatorServer", "run_simulator"]

SHUTDOWN_TIMEOUT_S = 1.0
"""How long stopping waits for requests in flight before cancelling them."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class SimulatorServer:
    """The simulator on its own event loop in a daemon thread.

    ``port=0`` picks a free port; ``url`` tells which. Use as a context manager or call
    :meth:`start` and :meth:`stop`::

        with SimulatorServer(SimulatorConfig(seed=1)) as sim:
            client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x")
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where clients reach the server, e.g. ``http://127.0.0.1:40123``."""
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SimulatorServer:
        """Bind the port and serve in the background; returns when the server accepts.

        Raises:
            RuntimeError: the server already runs.
            OSError: the port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        sock = _bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(
            create_simulator_app(self.config),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )

        async def boot() -> None:
            await runner.setup()
            await web.SockSite(runner, sock).start()

        booted = threading.Event()
        failures: list[BaseException] = []

        def serve() -> None:
            # Everything runs on this thread, so start() works inside a running event loop too.
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # noqa: BLE001 - re-raised by start() in the caller
                failures.append(exc)
                sock.close()
                loop.close()
                return
            finally:
                booted.set()
            try:
                loop.run_forever()
            finally:
                _close_loop(loop)

        thread = threading.Thread(target=serve, name=f"bastion-simulator-{self.port}", daemon=True)
        thread.start()
        booted.wait()
        if failures:
            thread.join()
            raise failures[0]
        self._loop, self._runner, self._thread = loop, runner, thread
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (requests in flight get ``SHUTDOWN_TIMEOUT_S`` to finish) and join the
        thread. Safe to call twice."""
        loop, thread, runner = self._loop, self._thread, self._runner
        self._loop = self._thread = self._runner = None
        if loop is None or thread is None or runner is None:
            return
        if thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            try:
                done.result(timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _url(host: str, port: int) -> str:
    wildcards = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104
    host = wildcards.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 9001,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator in the foreground until interrupted (Ctrl-C or SIGTERM).

    ``port=0`` picks a free port; ``ready`` is called with the server's URL once it is bound.

    Raises:
        OSError: the port cannot be bound.
    """
    sock = _bind(host, port)
    if ready is not None:
        ready(_url(host, int(sock.getsockname()[1])))
    web.run_app(
        create_simulator_app(config),
        sock=sock,
        print=None,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
