"""Injected faults, latency and output pacing.

Fault kinds (``FAULTS``): ``429`` (rate limited, with ``Retry-After``), ``500``, ``503``,
``timeout`` (hang ``timeout_s``, then 504), ``reset`` (the connection is aborted without a
response), ``drop`` (a stream breaks off after a few chunks, without its final event; a
plain request is reset) and ``garbage`` (200 with a body that is not JSON, or for a stream an
event whose data is not JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from types import MappingProxyType

from aiohttp import web

from bastion.providers.simulator.config import FAULTS, SimulatorConfig
from bastion.providers.simulator.errors import Api, api_error

__all__ = [
    "DROP_AFTER",
    "FAULTS",
    "Pacer",
    "abort",
    "draw_fault",
    "fault_response",
    "latency_seconds",
]

DROP_AFTER = 3
"""How many content chunks a ``drop`` fault lets through before the connection dies."""

_GARBAGE = b"<html><body>502 Bad Gateway (simulated garbage)</body></html>"


def draw_fault(config: SimulatorConfig, rng: random.Random) -> str | None:
    """The fault a request gets under ``config.error_rate``, or None."""
    if config.error_rate <= 0:
        return None
    if config.error_rate < 1 and rng.random() >= config.error_rate:
        return None
    faults = config.faults
    return faults[0] if len(faults) == 1 else rng.choice(faults)


def abort(request: web.BaseRequest) -> None:
    """Kill the connection at once: the client sees a reset, not a response."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def fault_response(
    request: web.BaseRequest,
    api: Api,
    fault: str,
    *,
    stream: bool,
    timeout_s: float,
    closing: asyncio.Event,
) -> web.StreamResponse | None:
    """The answer to a request that gets ``fault`` before any byte is sent; None when the
    fault happens later (``drop`` on a stream)."""
    if fault == "429":
        return api_error(
            api,
            429,
            "Rate limit reached (simulated). Please try again in 1s.",
            "rate_limit_error",
            headers={"Retry-After": "1", "retry-after-ms": "1000"},
        )
    if fault == "500":
        return api_error(api, 500, "The server had an error (simulated).", "api_error")
    if fault == "503":
        return api_error(api, 503, "The server is overloaded (simulated).", "overloaded_error")
    if fault == "timeout":
        # Hang, but wake up when the server shuts down so it can stop promptly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), timeout_s)
        return api_error(api, 504, "The request timed out (simulated).", "timeout_error")
    if fault == "garbage":
        if stream:
            return web.Response(
                body=b"data: " + _GARBAGE + b"\n\n", content_type="text/event-stream"
            )
        return web.Response(body=_GARBAGE, content_type="application/json")
    if fault == "drop" and stream:
        return None
    # reset, or drop without a stream: the connection dies and nothing can be written.
    abort(request)
    return web.Response(status=500)


def latency_seconds(mean_ms: float, jitter: float, rng: random.Random) -> float:
    """A latency around ``mean_ms``: constant, or lognormal with sigma ``jitter`` (same mean)."""
    if mean_ms <= 0:
        return 0.0
    if jitter > 0:
        mean_ms *= math.exp(rng.gauss(0.0, jitter) - jitter * jitter / 2)
    return mean_ms / 1000.0


class Pacer:
    """Spaces output at ``tokens_per_second`` (0: no pacing, never sleeps).

    The first tick returns at once; tick ``i`` returns ``i / tokens_per_second`` seconds
    after it, on a fixed schedule so sleeps do not accumulate drift.
    """

    __slots__ = ("_interval", "_next")

    def __init__(self, tokens_per_second: float) -> None:
        self._interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self._next = -1.0

    @property
    def active(self) -> bool:
        """Whether ticks can sleep."""
        return self._interval > 0

    async def tick(self) -> None:
        """Wait for the next token's slot."""
        if self._interval <= 0:
            return
        now = asyncio.get_running_loop().time()
        if self._next < 0:
            self._next = now
            return
        self._next += self._interval
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)


SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

PLAIN, TOKEN, FINAL = 0, 1, 2
"""Kinds of stream events: TOKEN events are paced (and counted for ``drop``); a ``drop``
fault cuts the stream before the first FINAL event at the latest."""


async def write_stream(
    request: web.Request,
    events: list[tuple[int, bytes]],
    *,
    pacer: Pacer,
    drop: bool,
) -> web.StreamResponse:
    """Send ``events`` as an event stream, paced, or broken off for a ``drop`` fault.

    Without pacing or fault the whole stream goes out in one write.
    """
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    # A client that goes away mid-stream leaves nothing to do: the handler just ends.
    with contextlib.suppress(ConnectionResetError):
        if not pacer.active and not drop:
            await response.write(b"".join([data for _, data in events]))
            await response.write_eof()
            return response
        tokens = 0
        for kind, data in events:
            if drop and (kind == FINAL or (kind == TOKEN and tokens >= DROP_AFTER)):
                abort(request)
                return response
            if kind == TOKEN:
                await pacer.tick()
                tokens += 1
            await response.write(data)
        await response.write_eof()
    return response
