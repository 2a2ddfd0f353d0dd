"""Server processes run on uvloop where it is installed and on asyncio's loop elsewhere."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bastion.server.event_loop import new_event_loop


def _serve_one_request(loop: asyncio.AbstractEventLoop) -> bytes:
    async def main() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        answer = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        return answer

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_the_server_loop_is_uvloop_where_installed() -> None:
    loop = new_event_loop()
    assert type(loop).__module__.startswith("uvloop")
    assert _serve_one_request(loop) == b"ping\n"


def test_without_uvloop_the_loop_is_asyncio_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    loop = new_event_loop()
    assert isinstance(loop, asyncio.BaseEventLoop)
    assert _serve_one_request(loop) == b"ping\n"
