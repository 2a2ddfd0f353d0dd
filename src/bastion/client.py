"""The Python SDK's entry point: `bastion.Client`.

    import bastion

    with bastion.Client() as client:  # BASTION_URL and BASTION_API_KEY from the environment
        prompt = client.prompts.get("summarize", label="production")
        messages = prompt.render(ticket="The app crashes on upload.")

The client is synchronous, thread-safe and cheap to keep for the life of the process (make one,
share it). Its only network dependency is the standard library.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import TracebackType

from bastion.prompts.client import PromptClient, namespace_of
from bastion.prompts.transport import HttpTransport

__all__ = ["Client"]


class Client:
    """A connection to a Bastion server for an application.

    Args:
        base_url: the server, e.g. ``https://bastion.internal``; default ``$BASTION_URL``. With
            neither, the client is offline: prompts come from ``cache_dir`` and
            ``fallback_dir`` only.
        api_key: a key with the ``read`` role; default ``$BASTION_API_KEY``.
        cache_ttl_s: how long a fetched prompt is served from memory before it is refreshed
            (in the background; the cached copy keeps being served meanwhile). Pinned
            ``version=`` lookups are cached for the life of the client.
        timeout_s: connect and read timeout of each request to the server.
        cache_dir: where the last copy fetched of each prompt is kept, to serve when the server
            is unreachable; default ``$BASTION_HOME/prompt-cache`` (``./.bastion`` when
            ``BASTION_HOME`` is unset).
        fallback_dir: a directory of ``<name>.prompt.yaml`` files (e.g. the repository's
            prompts), served when the server is unreachable and nothing is cached.

    Attributes:
        prompts: `bastion.prompts.client.PromptClient`: ``client.prompts.get(name, ...)``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        cache_ttl_s: float = 60.0,
        timeout_s: float = 5.0,
        cache_dir: str | os.PathLike[str] | None = None,
        fallback_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not cache_ttl_s >= 0 or math.isnan(cache_ttl_s):
            raise ValueError(f"cache_ttl_s must be >= 0, got {cache_ttl_s!r}")
        if not timeout_s > 0 or math.isinf(timeout_s):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        base_url = base_url or os.environ.get("BASTION_URL") or None
        api_key = api_key or os.environ.get("BASTION_API_KEY") or None
        if cache_dir is None:
            cache_dir = Path(os.environ.get("BASTION_HOME") or ".bastion") / "prompt-cache"
        self.base_url = base_url.rstrip("/") if base_url else None
        self._transport: HttpTransport | None = None
        if self.base_url is not None:
            from bastion.version import __version__

            headers = {"Accept": "application/json", "User-Agent": f"bastion-sdk/{__version__}"}
            if api_key:
                headers["Authorization"] = f"Bearer {api_key}"
            self._transport = HttpTransport(self.base_url, headers, timeout_s=timeout_s)
        self.prompts = PromptClient(
            self._transport,
            cache_ttl_s=cache_ttl_s,
            cache_dir=Path(cache_dir).resolve(),
            fallback_dir=None if fallback_dir is None else Path(fallback_dir).resolve(),
            namespace=namespace_of(self.base_url, api_key),
        )

    def close(self) -> None:
        """Wait for background refreshes, then close the connections. Idempotent."""
        self.prompts.close()
        if self._transport is not None:
            self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"
