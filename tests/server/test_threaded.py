"""An application served from a thread: it answers on loopback, cleans up on stop, and a
start-up failure reaches the caller."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bastion.server.threaded import serve_in_thread


def _app(events: list[str]) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        events.append("started")
        yield
        events.append("cleaned up")

    app = web.Application()
    app.router.add_get("/", hello)
    app.cleanup_ctx.append(lifecycle)
    return app


def test_serves_on_loopback_and_cleans_up_on_stop() -> None:
    events: list[str] = []
    served = serve_in_thread(_app(events))
    try:
        with urllib.request.urlopen(served.url + "/", timeout=10) as response:
            assert response.read() == b"hello"
        assert served.url == f"http://127.0.0.1:{served.port}"
    finally:
        served.stop()
    assert events == ["started", "cleaned up"]
    served.stop()  # a second stop is harmless


def test_a_port_in_use_is_a_start_up_error_with_its_cause() -> None:
    first = serve_in_thread(_app([]))
    events: list[str] = []
    try:
        with pytest.raises(RuntimeError, match="did not start") as caught:
            serve_in_thread(_app(events), port=first.port)
        assert isinstance(caught.value.__cause__, OSError)
        assert events == ["started", "cleaned up"]  # what had started was shut down
    finally:
        first.stop()
