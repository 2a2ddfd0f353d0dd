"""Shadow traffic: a copy of a live request sent to the candidate; the user never waits for it.

During a shadow rollout the user is always served by the stable release. A copy of the original
body is sent, as a separate task the request never awaits, to this same gateway process over
loopback with the caller's own key and attribution headers and an
``x-bastion-shadow`` header. That header carries the rollout id, the primary request's trace id
and an HMAC under a key that lives only in this process's memory, so no client can ask for the
candidate by sending the header itself. The copy is served by the candidate (arm ``shadow``,
never streamed) and recorded as its own span with ``bastion.release.shadow_of`` naming the
primary trace; its output goes nowhere but the span. A copy is not the caller's traffic: the
gateway's admission counts it under ``scope: shadow`` rate limits and budgets (by route), never
under the caller's key, team, user or project rules. Copies run on a bounded number of
connections: when ``max_in_flight`` are busy, further copies are dropped (counted), never queued
behind live traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter

__all__ = ["SHADOW_HEADER", "ShadowSender"]

log = logging.getLogger("bastion.releases")

SHADOW_HEADER = "x-bastion-shadow"
# Headers a copy keeps: the key (the copy is traced in the caller's project) and attribution;
# the rest (prompt headers, trace context) would conflict or mislead. The caller's rate limits
# and budgets never count a copy: admission counts it under `shadow` rules only.
_FORWARD = (
    "authorization",
    "x-api-key",
    "anthropic-version",
    "x-bastion-route",
    "x-bastion-environment",
    "x-bastion-user",
    "x-bastion-session",
    "x-bastion-feature",
    "x-bastion-tenant",
    "x-bastion-team",
)


class ShadowSender:
    """Sends shadow copies off the request path; one per gateway process."""

    def __init__(
        self, *, max_in_flight: int = 16, registry: CollectorRegistry | None = None
    ) -> None:
        self._secret = os.urandom(32)
        self.max_in_flight = max_in_flight
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = Counter(
            "bastion_release_shadow_requests",
            "Shadow copies of live requests sent to a candidate release, by outcome",
            ["outcome"],
            registry=registry,
        )

    def sign(self, rollout_id: str, trace_id: str) -> str:
        mac = hmac.new(self._secret, f"{rollout_id}:{trace_id}".encode(), hashlib.sha256)
        return f"{rollout_id}:{trace_id}:{mac.hexdigest()[:32]}"

    def verify(self, value: str) -> tuple[str, str] | None:
        """``(rollout id, primary trace id)`` of a genuine shadow header, else None."""
        parts = value.split(":")
        if len(parts) != 3:
            return None
        rollout_id, trace_id, _mac = parts
        if not hmac.compare_digest(self.sign(rollout_id, trace_id), value):
            return None
        return rollout_id, trace_id

    def schedule(
        self,
        base_url: str,
        path: str,
        body: Any,
        headers: Mapping[str, str],
        rollout_id: str,
        trace_id: str,
    ) -> None:
        """Send a copy of ``body`` to the candidate in the background (dropped when full)."""
        if not isinstance(body, dict):
            return
        if len(self._tasks) >= self.max_in_flight:  # before any copying: a drop costs nothing
            self.sent.labels("dropped").inc()
            return
        copy = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        forward = {k: v for k, v in headers.items() if k.lower() in _FORWARD}
        forward[SHADOW_HEADER] = self.sign(rollout_id, trace_id)
        forward["content-type"] = "application/json"
        payload = orjson.dumps(copy)
        # Its own task: the handler never awaits it, so the user's answer never waits for the
        # candidate (only the two share the event loop, for the few CPU microseconds of a relay).
        task = asyncio.get_running_loop().create_task(self._send(base_url + path, payload, forward))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, payload: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        try:
            async with self._session.post(url, data=payload, headers=headers) as response:
                await response.read()  # the output is on the span; nobody reads it here
                self.sent.labels("ok" if response.status < 400 else "error").inc()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.sent.labels("failed").inc()
            log.debug("shadow copy to %s failed: %s", url, exc)

    async def close(self) -> None:
        """Wait briefly for copies in flight, then close the client."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
            for task in self._tasks:
                task.cancel()
        if self._session is not None:
            await self._session.close()
