"""The response cache on the request path: lookup before the provider, store after it.

Keying. An entry's key is a SHA-256 of the project, the request's cache namespace
(``x-bastion-cache-key``), the alias that serves it (after tier routing) and the one asked for,
the API format, the operation, and every request field that can change the answer — messages,
system, tools, temperature, max_tokens, n, … — as canonical JSON (sorted keys). Left out:
``stream`` and ``stream_options`` (an entry holds the non-streamed answer and is replayed as a
stream on demand, so streaming and non-streaming requests share entries), and ``user``,
``metadata`` and ``store`` (attribution, not input). Projects never share entries: the project
id is in every key, and the semantic index is partitioned the same way.

What is stored: only complete, successful answers — a whole body relayed with 200, or a
stream that reached its end marker. Errors, streams broken off or cut by the client, and
answers over ``max_entry_bytes`` are never stored. Temperature does not matter unless
``exact.max_temperature`` is set (a hotter request then neither reads nor writes the cache).

Per request (headers; ``Cache-Control`` is read the same way):

- ``x-bastion-cache: no-cache`` — do not answer from the cache (the fresh answer is stored);
- ``x-bastion-cache: no-store`` — do not store this answer (a cached one may still answer);
- ``x-bastion-cache: off`` — both;
- ``x-bastion-cache-key: <namespace>`` — entries are looked up and stored under this namespace
  only (still within the project);
- ``x-bastion-cache-ttl: <seconds>`` — this answer's lifetime, up to ``exact.max_ttl_s``.

Every response of a cached route carries ``x-bastion-cache: hit|miss|bypass|skip``; the span
records ``bastion.cache.status``, ``bastion.cache.layer`` (exact|semantic), on a hit
``bastion.cache.saved_usd`` (the original call's cost) and ``bastion.cache.age_s``, with the
hit's own cost 0, and for semantic lookups ``bastion.cache.similarity``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.catalog import Catalog
from bastion.gateway.cache_config import CacheConfig, load_cache_config
from bastion.gateway.cache_replay import anthropic_events, body_from_stream, openai_events
from bastion.gateway.cache_store import CachedAnswer, CacheStore, MemoryStore, RedisStore
from bastion.gateway.errors import Api, GatewayError
from bastion.gateway.recording import AnswerCapture, Call
from bastion.gateway.router import Router
from bastion.gateway.semantic_cache import SemanticCache
from bastion.providers.config import GatewayConfig, ModelAlias
from bastion.providers.translate import Usage
from bastion.providers.upstream import Upstream
from bastion.settings import ConfigError, Settings
from bastion.tracing.attributes import (
    CACHE_AGE_S,
    CACHE_KEY,
    CACHE_LAYER,
    CACHE_SAVED_USD,
    CACHE_SIMILARITY,
    CACHE_STATUS,
)

__all__ = ["ResponseCache", "make_response_cache"]

log = logging.getLogger("bastion.gateway")

_KEY_VERSION = 1
_NOT_KEYED = frozenset({"stream", "stream_options", "user", "metadata", "store"})
_NAMESPACE_MAX = 256
_CACHED_OPERATIONS = frozenset({"chat", "embeddings"})


class _Pending(AnswerCapture):
    """A miss whose answer is to be stored: where, for how long, and its semantic position."""

    __slots__ = ("key", "partition", "requested_ttl_s", "ttl_s", "vector")

    def __init__(
        self,
        key: str | None,
        ttl_s: float,
        requested_ttl_s: float | None,
        partition: str | None,
        vector: list[float] | None,
    ) -> None:
        super().__init__()
        self.key = key
        self.ttl_s = ttl_s
        self.requested_ttl_s = requested_ttl_s
        self.partition = partition
        self.vector = vector


class _Controls:
    __slots__ = ("lookup", "namespace", "store", "ttl_s")

    def __init__(self) -> None:
        self.lookup = True
        self.store = True
        self.namespace = ""
        self.ttl_s: float | None = None


def _invalid(message: str, header: str) -> GatewayError:
    return GatewayError(400, message, error_class="invalid_request", param=header)


class ResponseCache:
    """Exact-match (memory or Redis) and semantic caches, with their metrics.

    ``clock`` (monotonic seconds) drives expiry and is injectable for tests.
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        registry: CollectorRegistry,
        catalog: Catalog | None = None,
        redis_url: str | None = None,
        semantic: SemanticCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.semantic = semantic if config.semantic_on else None
        self.enabled = config.exact_on or self.semantic is not None
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = Counter(
            "bastion_gateway_cache_requests",
            "Response cache lookups by layer and outcome (hit, miss, bypass, skip)",
            ["layer", "outcome"],
            registry=registry,
        )
        self.saved_usd = Counter(
            "bastion_gateway_cache_saved_usd",
            "Provider cost avoided by cache hits (the original calls' cost), USD",
            registry=registry,
        )
        self.stores = Counter(
            "bastion_gateway_cache_stores",
            "Answers offered to the response cache by layer and outcome (stored, too_large)",
            ["layer", "outcome"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "bastion_gateway_cache_backend_errors",
            "Response cache Redis operations that failed (the request was served without it)",
            ["operation"],
            registry=registry,
        )
        entries = Gauge(
            "bastion_gateway_cache_entries",
            "Entries in this process's in-memory response cache",
            registry=registry,
        )
        exact = config.exact
        self.exact_store: CacheStore | None = None
        if exact is not None and exact.enabled:
            memory = MemoryStore(
                exact.max_entries,
                max_bytes=exact.max_memory_bytes,
                clock=clock,
                entries_gauge=entries,
            )
            use_redis = exact.backend == "redis" or (exact.backend == "auto" and redis_url)
            if use_redis and redis_url:
                self.exact_store = RedisStore(
                    redis_url,
                    prefix=exact.redis_prefix,
                    timeout_s=exact.redis_timeout_s,
                    retry_s=exact.redis_retry_s,
                    fallback=memory,
                    errors=self.backend_errors,
                    clock=clock,
                )
            else:
                self.exact_store = memory

    @property
    def backend(self) -> str:
        """``memory``, ``redis`` or ``off``."""
        return self.exact_store.name if self.exact_store is not None else "off"

    async def close(self) -> None:
        """Wait for pending Redis writes, then close the connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.exact_store is not None:
            await self.exact_store.close()

    # -- lookup ---------------------------------------------------------------------------

    async def lookup(
        self,
        request: web.Request,
        call: Call,
        api: Api,
        alias: ModelAlias,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        """The cached answer as the client's response, or None (then the call's answer will
        be captured for :meth:`store` unless the request said ``no-store``).

        Raises a 400 :class:`GatewayError` for malformed cache headers.
        """
        if not self.enabled or call.operation not in _CACHED_OPERATIONS:
            return None
        controls = self._controls(request.headers)
        layer = "exact" if self.exact_store is not None else "semantic"
        if not self._cacheable(body):
            return self._status(call, headers, layer, "skip")
        if not controls.lookup and not controls.store:
            return self._status(call, headers, layer, "bypass")
        project = call.project_id if call.project_id is not None else -1
        key = None
        if self.exact_store is not None:
            key = self.key(project, controls.namespace, alias.name, api, call.operation, body)
            call.attributes[CACHE_KEY] = key[:16]
            if controls.lookup:
                answer = await self.exact_store.get(key)
                data = _parse(answer)
                if answer is not None and data is not None:
                    return await self._hit(request, call, api, body, headers, answer, data, "exact")
        partition = vector = None
        semantic = self.semantic
        if semantic is not None and call.operation == "chat":
            query = semantic.query(project, controls.namespace, alias.name, api, body)
            if query is not None:
                partition = query.partition
                vector = await semantic.embed(query.text, call)
                if vector is not None and controls.lookup:
                    found = semantic.search(partition, vector)
                    if found is not None:
                        answer, similarity = found
                        call.attributes[CACHE_SIMILARITY] = round(similarity, 6)
                        data = _parse(answer)
                        if similarity >= semantic.config.threshold and data is not None:
                            return await self._hit(
                                request, call, api, body, headers, answer, data, "semantic"
                            )
        if controls.store:
            exact = self.config.exact
            ttl = controls.ttl_s or (exact.ttl_s if exact is not None else 0.0)
            call.capture = _Pending(key, ttl, controls.ttl_s, partition, vector)
        self._status(call, headers, layer, "miss" if controls.lookup else "bypass")
        return None

    def _status(
        self, call: Call, headers: dict[str, str], layer: str, status: str
    ) -> web.StreamResponse | None:
        self.requests.labels(layer, status).inc()
        call.attributes[CACHE_STATUS] = status
        headers["x-bastion-cache"] = status
        return None

    def _cacheable(self, body: Mapping[str, Any]) -> bool:
        exact = self.config.exact
        limit = exact.max_temperature if exact is not None else None
        if limit is None:
            return True
        temperature = body.get("temperature")
        # Absent means the provider's default (1.0 for both APIs): hot.
        value = temperature if isinstance(temperature, int | float) else 1.0
        return bool(value <= limit)

    def _controls(self, headers: Mapping[str, str]) -> _Controls:
        controls = _Controls()
        for name in ("x-bastion-cache", "Cache-Control"):
            value = headers.get(name)
            if not value:
                continue
            for token in value.split(","):
                token = token.strip().lower()
                if token in ("no-cache", "off"):
                    controls.lookup = False
                if token in ("no-store", "off"):
                    controls.store = False
                if name == "x-bastion-cache" and token not in ("no-cache", "no-store", "off", ""):
                    raise _invalid(
                        f"x-bastion-cache: unknown directive {token!r} "
                        "(use no-cache, no-store or off)",
                        "x-bastion-cache",
                    )
        namespace = headers.get("x-bastion-cache-key")
        if namespace is not None:
            if not namespace.strip() or len(namespace) > _NAMESPACE_MAX:
                raise _invalid(
                    f"x-bastion-cache-key must be 1 to {_NAMESPACE_MAX} characters",
                    "x-bastion-cache-key",
                )
            controls.namespace = namespace
        ttl = headers.get("x-bastion-cache-ttl")
        if ttl is not None:
            limit = self.config.exact.max_ttl_s if self.config.exact is not None else 86_400.0
            try:
                seconds = float(ttl)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= limit:  # also rejects NaN
                raise _invalid(
                    f"x-bastion-cache-ttl must be a number of seconds in (0, {limit:g}], "
                    f"got {ttl[:40]!r}",
                    "x-bastion-cache-ttl",
                )
            controls.ttl_s = seconds
        return controls

    @staticmethod
    def key(
        project_id: int,
        namespace: str,
        alias: str,
        api: str,
        operation: str,
        body: Mapping[str, Any],
    ) -> str:
        """The entry key: every input that can change the answer, canonically hashed."""
        keyed = {k: v for k, v in body.items() if k not in _NOT_KEYED}
        material = [_KEY_VERSION, project_id, namespace, alias, api, operation, keyed]
        return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()

    async def _hit(
        self,
        request: web.Request,
        call: Call,
        api: Api,
        body: Mapping[str, Any],
        headers: dict[str, str],
        answer: CachedAnswer,
        data: Any,
        layer: str,
    ) -> web.StreamResponse:
        self.requests.labels(layer, "hit").inc()
        if answer.cost_usd:
            self.saved_usd.inc(answer.cost_usd)
        call.served_model = answer.served_model
        call.cost_usd = 0.0
        call.usage = Usage(
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            cached_tokens=answer.cached_tokens,
            cache_write_tokens=answer.cache_write_tokens,
        )
        attributes = call.attributes
        attributes[CACHE_STATUS] = "hit"
        attributes[CACHE_LAYER] = layer
        attributes[CACHE_SAVED_USD] = answer.cost_usd
        if answer.created_at:
            attributes[CACHE_AGE_S] = round(max(0.0, time.time() - answer.created_at), 3)
        headers["x-bastion-cache"] = "hit"
        call.output = _output(api, call.operation, data)
        if not call.stream:
            call.mark_first_byte()
            return web.Response(body=answer.body, content_type="application/json", headers=headers)
        if api == "anthropic":
            events = anthropic_events(data)
        else:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events = openai_events(data, include_usage=include_usage)
        out = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await out.prepare(request)
            call.mark_first_byte()
            await out.write(events)
            await out.write_eof()
        except ConnectionResetError:
            call.fail(499, "client_disconnected", "the client disconnected mid-stream")
        return out

    # -- store ----------------------------------------------------------------------------

    def store(self, call: Call) -> None:
        """Keep the call's answer if it completed successfully (after ``resilience.serve``)."""
        pending = call.capture
        if not isinstance(pending, _Pending) or call.error_class is not None:
            return
        call.capture = None
        body = pending.body
        if body is None and pending.summary is not None and pending.kind is not None:
            body = body_from_stream(call.api, pending.kind, pending.summary, call.served_model)
        if body is None:
            return
        exact = self.config.exact
        limit = exact.max_entry_bytes if exact is not None else 1024 * 1024
        layer = "exact" if pending.key is not None else "semantic"
        if len(body) > limit:
            self.stores.labels(layer, "too_large").inc()
            return
        usage = call.usage
        answer = CachedAnswer(
            body=body,
            served_model=call.served_model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=self._cost(call),
            created_at=time.time(),
        )
        if pending.key is not None and self.exact_store is not None:
            self.stores.labels("exact", "stored").inc()
            if isinstance(self.exact_store, MemoryStore):
                self.exact_store.set_now(pending.key, answer, pending.ttl_s)
            else:
                # Written after the response: a Redis round trip is not the client's wait.
                task = asyncio.create_task(self.exact_store.set(pending.key, answer, pending.ttl_s))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self.semantic is not None and pending.partition is not None and pending.vector:
            self.stores.labels("semantic", "stored").inc()
            self.semantic.add(
                pending.partition, pending.vector, answer, ttl_s=pending.requested_ttl_s
            )

    def _cost(self, call: Call) -> float | None:
        if self.catalog is None:
            return None
        for name in (call.served_model, call.requested_model):
            info = self.catalog.lookup(name, project_id=call.project_id)
            if info is not None:
                usage = call.usage
                return info.cost(
                    usage.input_tokens, usage.output_tokens, usage.cached_tokens,
                    usage.cache_write_tokens,
                )  # fmt: skip
        return None

    async def settle(self) -> None:
        """Wait for the background Redis writes started so far (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _parse(answer: CachedAnswer | None) -> Any:
    """The entry's body as JSON; None for no entry or one that is not a JSON object."""
    if answer is None:
        return None
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _output(api: str, operation: str, data: Any) -> Any:
    """What the span shows as output, as the relay would have recorded it."""
    if not isinstance(data, dict) or operation != "chat":
        return None
    if api == "openai":
        return [c.get("message") for c in data.get("choices") or [] if isinstance(c, dict)]
    return data.get("content")


def make_response_cache(
    settings: Settings,
    config: GatewayConfig,
    router: Router,
    upstream: Upstream,
    *,
    registry: CollectorRegistry,
    catalog: Catalog | None,
) -> ResponseCache:
    """The cache ``bastion.yaml`` describes (off when it has no ``cache:`` section)."""
    cache_config = load_cache_config(settings)
    semantic = None
    if cache_config.semantic is not None and cache_config.semantic_on:
        name = cache_config.semantic.embedding_model or ""
        alias = config.alias(name)
        if alias is None or not alias.deployments:
            key = "cache.semantic.embedding_model"
            raise ConfigError(
                f"{settings.where(key)}{key}: {name!r} is not a model alias with deployments "
                f"(known: {', '.join(sorted(config.aliases))})"
            )
        semantic = SemanticCache(cache_config.semantic, config, router, upstream, registry=registry)
    cache = ResponseCache(
        cache_config,
        registry=registry,
        catalog=catalog,
        redis_url=settings.redis_url,
        semantic=semantic,
    )
    if cache.enabled:
        log.info(
            "response cache: exact %s, semantic %s",
            cache.backend,
            "on" if semantic is not None else "off",
        )
    return cache
