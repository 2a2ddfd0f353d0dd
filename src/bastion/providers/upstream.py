"""The pooled HTTP client that calls providers (aiohttp: measured fastest here under load)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from bastion.providers.config import Deployment, ProviderConfig, Timeouts

__all__ = ["Endpoint", "Upstream", "UpstreamUnavailable"]

Endpoint = str  # "chat" | "messages" | "embeddings"

_PATHS: dict[tuple[str, str], str] = {
    ("openai", "chat"): "/chat/completions",
    ("openai", "embeddings"): "/embeddings",
    ("anthropic", "messages"): "/v1/messages",
}


class UpstreamUnavailable(Exception):
    """The provider could not be reached or did not answer in time (no response to relay)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Upstream:
    """One connection pool for all providers, created on the server's event loop."""

    def __init__(
        self, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        # Per-alias timeouts, built once each (ClientTimeout is immutable).
        self._timeouts: dict[Timeouts, tuple[aiohttp.ClientTimeout, float]] = {}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        # auto_decompress off: bodies are relayed as the provider sent them, byte for byte.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            json_serialize=None,  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def url(provider: ProviderConfig, endpoint: Endpoint) -> str:
        path = _PATHS.get((provider.kind, endpoint))
        if path is None:
            raise ValueError(f"{provider.kind} providers do not serve {endpoint}")
        return provider.base_url + path

    @staticmethod
    def headers(provider: ProviderConfig, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        headers.update(provider.headers)
        if provider.kind == "anthropic":
            headers["anthropic-version"] = provider.anthropic_version
            if provider.api_key:
                headers["x-api-key"] = provider.api_key
        elif provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        headers.update(extra)
        return headers

    def _client_timeout(self, timeouts: Timeouts) -> tuple[aiohttp.ClientTimeout, float]:
        found = self._timeouts.get(timeouts)
        if found is None:
            first_byte = timeouts.first_byte_s or self._read_timeout_s
            idle = timeouts.idle_s or self._read_timeout_s
            # sock_read starts as the first-byte limit (it also covers the wait for the head);
            # once the head is in, send() switches the connection to the idle limit.
            client = aiohttp.ClientTimeout(
                total=timeouts.total_s,
                sock_connect=timeouts.connect_s or self._connect_timeout_s,
                sock_read=first_byte,
            )
            found = self._timeouts[timeouts] = (client, idle)
        return found

    async def send(
        self,
        deployment: Deployment,
        endpoint: Endpoint,
        body: bytes,
        extra_headers: Mapping[str, str],
        timeouts: Timeouts | None = None,
    ) -> aiohttp.ClientResponse:
        """POST ``body``; the caller reads (or streams) and releases the response.

        With ``timeouts`` (an alias's), the wait for the response head and first body bytes is
        bounded by ``first_byte_s``, every later gap between chunks by ``idle_s``, the whole
        attempt by ``total_s``; otherwise the gateway-wide settings apply.
        """
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        provider = deployment.provider
        try:
            client_timeout, idle_s = (
                (self._timeout, None) if timeouts is None else self._client_timeout(timeouts)
            )
            response = await self._session.post(
                self.url(provider, endpoint),
                data=body,
                headers=self.headers(provider, extra_headers),
                allow_redirects=False,
                timeout=client_timeout,
            )
            connection = response.connection
            if idle_s is not None and connection is not None and connection.protocol is not None:
                # The timer armed now still runs with the first-byte limit (so a head sent
                # early does not shorten the wait for the first chunk); each later chunk
                # re-arms it with the idle limit.
                connection.protocol.read_timeout = idle_s
            return response
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                f"provider {provider.name!r} did not answer in time", timeout=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"cannot reach provider {provider.name!r}: {type(exc).__name__}"
            ) from exc
