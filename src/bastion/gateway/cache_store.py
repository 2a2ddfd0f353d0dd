"""Where cached answers live: a bounded in-memory LRU with TTL, or Redis shared by replicas.

An entry is immutable once written (a new answer for the same key replaces it whole), so
replicas sharing Redis need no coordination beyond ``SET … PX``. When Redis fails (down, slow,
refusing), the Redis store logs once, counts the failure, serves from and writes to its local
memory store for ``redis_retry_s``, then tries Redis again: a request never fails because of
the cache, and never waits on a dead Redis more than once per retry period.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Gauge

__all__ = ["CacheStore", "CachedAnswer", "MemoryStore", "RedisStore"]

log = logging.getLogger("bastion.gateway")

_FORMAT = 1  # bumped when the encoding changes, so old Redis entries are ignored


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A complete, successful answer as the client's API shapes it when not streamed.

    ``cost_usd`` is what the original call cost (None when its price is unknown): the saving
    each hit reports.
    """

    body: bytes
    served_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    cost_usd: float | None = None
    created_at: float = 0.0

    def encode(self) -> bytes:
        """One line of JSON metadata, a newline, then the body (orjson never emits newlines)."""
        meta = {
            "v": _FORMAT,
            "model": self.served_model,
            "in": self.input_tokens,
            "out": self.output_tokens,
            "cached": self.cached_tokens,
            "written": self.cache_write_tokens,
            "cost": self.cost_usd,
            "at": self.created_at,
        }
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """The answer ``encode`` wrote, or None for anything else (other format, junk)."""
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            meta = orjson.loads(head)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(meta, dict) or meta.get("v") != _FORMAT:
            return None
        return cls(
            body=body,
            served_model=_opt(meta.get("model"), str),
            input_tokens=_opt(meta.get("in"), int),
            output_tokens=_opt(meta.get("out"), int),
            cached_tokens=_opt(meta.get("cached"), int),
            cache_write_tokens=_opt(meta.get("written"), int),
            cost_usd=_opt(meta.get("cost"), float),
            created_at=float(meta.get("at") or 0.0),
        )


def _opt(value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


class CacheStore(Protocol):
    """A key → answer store with per-entry TTL."""

    name: str

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def set(self, key: str, answer: CachedAnswer, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Least-recently-used, bounded by entries and by body bytes in all; expired entries are
    dropped when met.

    ``clock`` (monotonic seconds) is injectable for tests.
    """

    name = "memory"

    def __init__(
        self,
        max_entries: int,
        *,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        entries_gauge: Gauge | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._gauge = entries_gauge

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str) -> CachedAnswer | None:
        """The live entry for ``key`` (synchronous: no I/O)."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires_at, answer = found
        if self._clock() >= expires_at:
            del self._entries[key]
            self.size_bytes -= len(answer.body)
            self._count()
            return None
        self._entries.move_to_end(key)
        return answer

    def set_now(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        """Store ``answer`` for ``ttl_s`` seconds, evicting the least recently used entry."""
        entries = self._entries
        previous = entries.get(key)
        if previous is not None:
            self.size_bytes -= len(previous[1].body)
        entries[key] = (self._clock() + ttl_s, answer)
        entries.move_to_end(key)
        self.size_bytes += len(answer.body)
        limit = self.max_bytes
        while len(entries) > self.max_entries or (
            limit is not None and self.size_bytes > limit and len(entries) > 1
        ):
            _, (_, evicted) = entries.popitem(last=False)
            self.size_bytes -= len(evicted.body)
        self._count()

    async def get(self, key: str) -> CachedAnswer | None:
        return self.get_now(key)

    async def set(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        self.set_now(key, answer, ttl_s)

    async def close(self) -> None:
        self._entries.clear()
        self.size_bytes = 0

    def _count(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self._entries))


class RedisStore:
    """Entries in Redis under ``prefix + key`` with ``PX`` expiry; ``fallback`` while it fails."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float,
        retry_s: float,
        fallback: MemoryStore,
        errors: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Imported here: the ``redis`` package is an optional extra, needed only with a URL.
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.prefix = prefix
        self.retry_s = retry_s
        self.fallback = fallback
        self._errors = errors
        self._clock = clock
        self._down_until: float | None = None
        self._recovering = False
        # No client-side retries: one failed command means "down for retry_s", not three waits.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    @property
    def healthy(self) -> bool:
        """Whether Redis is in use now (False while the fallback serves)."""
        return self._down_until is None

    def _usable(self) -> bool:
        if self._down_until is None:
            return True
        if self._clock() >= self._down_until:
            self._down_until = None  # try again; the next failure starts another period
            return True
        return False

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._errors.labels(operation).inc()
        if self._down_until is None:
            log.warning(
                "response cache: Redis %s failed (%s: %s); serving from process memory for %gs",
                operation,
                type(exc).__name__,
                exc,
                self.retry_s,
            )
        self._down_until = self._clock() + self.retry_s
        self._recovering = True

    async def get(self, key: str) -> CachedAnswer | None:
        if not self._usable():
            return self.fallback.get_now(key)
        try:
            raw = await self._redis.get(self.prefix + key)
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "serve without it"
            self._failed("get", exc)
            return self.fallback.get_now(key)
        if self._recovering:
            self._recovering = False
            log.info("response cache: Redis answers again; entries are shared again")
        if raw is None:
            return self.fallback.get_now(key)  # written locally while Redis was down
        return CachedAnswer.decode(raw) if isinstance(raw, bytes) else None

    async def set(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        if not self._usable():
            self.fallback.set_now(key, answer, ttl_s)
            return
        try:
            await self._redis.set(self.prefix + key, answer.encode(), px=max(1, int(ttl_s * 1000)))
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "serve without it"
            self._failed("set", exc)
            self.fallback.set_now(key, answer, ttl_s)

    async def close(self) -> None:
        await self._redis.aclose()
        await self.fallback.close()
