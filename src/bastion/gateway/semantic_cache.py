"""The semantic cache: answers reused for requests that *mean* the same.

What is embedded: the text of the **last user message** only. Everything else in the request —
earlier turns, system prompt, tools, temperature, max_tokens, … — must match *exactly*: it is
hashed (with project, cache namespace, alias and API format) into the entry's *partition*, and
a request only searches its own partition. So "What is the capital of France?" and "what's
France's capital?" can share an answer, but never across projects, models, system prompts or
conversation histories. A last user message with non-text parts (images, tool results) is not
looked up semantically.

Embeddings come from the gateway's own upstream: a POST to the provider of the alias named by
``semantic.embedding_model`` (any alias whose deployment serves ``/v1/embeddings``). A failed or
slow embedding (``timeout_s``) is a miss, counted and logged once per outage.

The index is in process memory: vectors normalised at insertion, a linear scan of the request's
partition (cosine similarity = dot product), bounded to ``max_entries`` entries in all
(least recently used first) with a TTL. No numpy: partitions are small in practice (one per
distinct context), and the scan is pure Python (~10 µs per 256-dimension entry).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from bastion.gateway.cache_config import SemanticCacheConfig
from bastion.gateway.cache_store import CachedAnswer
from bastion.gateway.recording import Call
from bastion.gateway.router import Router
from bastion.providers.config import GatewayConfig
from bastion.providers.upstream import Upstream, UpstreamUnavailable
from bastion.tracing.attributes import CACHE_EMBEDDING_MS

__all__ = ["SemanticCache", "SemanticQuery", "last_user_text"]

log = logging.getLogger("bastion.gateway")

_NOT_KEYED = frozenset({"stream", "stream_options", "user", "metadata", "store"})


@dataclass(frozen=True, slots=True)
class SemanticQuery:
    """The exact part of a request (its partition) and the text to embed."""

    partition: str
    text: str


@dataclass(slots=True)
class _Entry:
    partition: str
    vector: list[float]
    answer: CachedAnswer
    expires_at: float


def last_user_text(api: str, body: Mapping[str, Any]) -> tuple[int, str] | None:
    """The index and text of the last user message; None when it has non-text parts."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return index, content
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    return None
                text = part.get("text")
                if not isinstance(text, str):
                    return None
                texts.append(text)
            return index, "\n".join(texts)
        return None
    return None


def _normalised(vector: list[float]) -> list[float] | None:
    norm = math.sqrt(math.fsum(v * v for v in vector))
    if not norm or not math.isfinite(norm):
        return None
    return [v / norm for v in vector]


class SemanticCache:
    """Embeds, searches and remembers; see the module docstring for what matches what."""

    def __init__(
        self,
        config: SemanticCacheConfig,
        gateway_config: GatewayConfig,
        router: Router,
        upstream: Upstream,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.gateway_config = gateway_config
        self.router = router
        self.upstream = upstream
        self._clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._partitions: dict[str, dict[int, _Entry]] = {}
        self._next_id = 0
        self._failing = False
        self._errors = (
            Counter(
                "bastion_gateway_semantic_cache_embedding_errors",
                "Embedding calls of the semantic cache that failed (served as a miss)",
                registry=registry,
            )
            if registry is not None
            else None
        )

    def __len__(self) -> int:
        return len(self._entries)

    def query(
        self, project_id: int, namespace: str, alias: str, api: str, body: Mapping[str, Any]
    ) -> SemanticQuery | None:
        """The request's partition and text, or None when it cannot be matched semantically."""
        found = last_user_text(api, body)
        if found is None:
            return None
        index, text = found
        if not text.strip() or len(text) > self.config.max_text_chars:
            return None
        rest = {k: v for k, v in body.items() if k not in _NOT_KEYED}
        messages = list(body["messages"])
        messages[index] = {"role": "user", "content": "<semantic>"}
        rest["messages"] = messages
        material = [1, project_id, namespace, alias, api, rest]
        digest = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return SemanticQuery(partition=digest, text=text)

    async def embed(self, text: str, call: Call | None = None) -> list[float] | None:
        """The unit vector of ``text``, or None when the embedding call failed."""
        name = self.config.embedding_model or ""
        alias = self.gateway_config.alias(name)
        if alias is None or not alias.deployments:
            self._failed(f"embedding model {name!r} is not a served alias")
            return None
        deployment = self.router.choose(alias)
        body = orjson.dumps({"model": deployment.model, "input": text, "encoding_format": "float"})
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await self.upstream.send(deployment, "embeddings", body, {})
                try:
                    raw = await response.read()
                finally:
                    response.release()
        except (TimeoutError, UpstreamUnavailable, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - aiohttp errors: the cache must not fail a call
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        if call is not None:
            elapsed = (time.perf_counter() - started) * 1000.0
            call.attributes[CACHE_EMBEDDING_MS] = round(elapsed, 3)
        vector = self._vector(response.status, raw)
        if vector is None:
            self._failed(f"unusable embeddings answer (HTTP {response.status})")
            return None
        if self._failing:
            self._failing = False
            log.info("semantic cache: embeddings from %r work again", name)
        return vector

    def _vector(self, status: int, raw: bytes) -> list[float] | None:
        if status != 200:
            return None
        try:
            data = orjson.loads(raw)
            values = data["data"][0]["embedding"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return None
        if not isinstance(values, list) or not values:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return None
        return _normalised([float(v) for v in values])

    def _failed(self, reason: str) -> None:
        if self._errors is not None:
            self._errors.inc()
        if not self._failing:
            self._failing = True
            log.warning("semantic cache: embedding failed (%s); lookups are misses", reason)

    def search(self, partition: str, vector: list[float]) -> tuple[CachedAnswer, float] | None:
        """The most similar live entry of ``partition`` and its similarity, if any."""
        entries = self._partitions.get(partition)
        if not entries:
            return None
        now = self._clock()
        best: _Entry | None = None
        best_id = -1
        best_score = -2.0
        expired = []
        for entry_id, entry in entries.items():
            if entry.expires_at <= now:
                expired.append(entry_id)
                continue
            if len(entry.vector) != len(vector):
                continue  # the embedding model changed dimensions
            score = sum(map(operator.mul, entry.vector, vector))
            if score > best_score:
                best, best_id, best_score = entry, entry_id, score
        for entry_id in expired:
            self._remove(entry_id)
        if best is None:
            return None
        self._entries.move_to_end(best_id)
        return best.answer, best_score

    def add(
        self,
        partition: str,
        vector: list[float],
        answer: CachedAnswer,
        *,
        ttl_s: float | None = None,
    ) -> None:
        """Remember ``answer`` for requests of ``partition`` embedding near ``vector``, for
        ``ttl_s`` (the request's own lifetime, at most the configured one)."""
        for entry_id, entry in list(self._partitions.get(partition, {}).items()):
            if entry.vector == vector:
                self._remove(entry_id)  # the same text again (a no-cache refresh): replaced
        entry_id = self._next_id
        self._next_id += 1
        lifetime = min(ttl_s, self.config.ttl_s) if ttl_s else self.config.ttl_s
        entry = _Entry(partition, vector, answer, self._clock() + lifetime)
        self._entries[entry_id] = entry
        self._partitions.setdefault(partition, {})[entry_id] = entry
        while len(self._entries) > self.config.max_entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        members = self._partitions.get(entry.partition)
        if members is not None:
            members.pop(entry_id, None)
            if not members:
                del self._partitions[entry.partition]
