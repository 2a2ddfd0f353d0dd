"""A small synchronous HTTP/1.1 client for the SDK: keep-alive connections, stdlib only.

`urllib.request` opens a new connection per request and `httpx` is not a runtime dependency, so
the SDK keeps a few idle `http.client` connections per client and reuses them (one TCP and TLS
handshake per connection, not per request). A request on a reused connection that the server
has meanwhile closed is retried once on a fresh one (only GETs go through here, so a retry is
safe). Every network failure leaves as `TransportError`.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Mapping

__all__ = ["HttpTransport", "TransportError"]

_MAX_IDLE = 4
# A reused connection the server closed while it sat idle fails in one of these ways.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class TransportError(Exception):
    """The request did not get an HTTP response: refused, timed out, reset, malformed."""


class HttpTransport:
    """GET requests against one base URL over a small pool of keep-alive connections.

    Thread-safe: each request checks a connection out of the pool (or opens one) and puts it
    back when the response was read in full and the server keeps it open.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
        max_idle: int = _MAX_IDLE,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(headers)
        self._timeout_s = timeout_s
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self, path: str, query: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """GET ``path`` (below the base URL's path) and return ``(status, body)``."""
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        for attempt in (0, 1):
            conn, reused = self._checkout()
            try:
                conn.request("GET", target, headers=self._headers)
                response = conn.getresponse()
                body = response.read()
            except _STALE_CONNECTION as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise TransportError(_describe(exc)) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(_describe(exc)) from exc
            if response.will_close:
                conn.close()
            else:
                self._checkin(conn)
            return response.status, body
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise TransportError("the client is closed")
            if self._idle:
                return self._idle.pop(), True
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        return conn, False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"
