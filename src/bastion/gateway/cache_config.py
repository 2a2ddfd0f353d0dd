"""The ``cache:`` section of ``bastion.yaml``: the exact-match and the semantic response cache.

```yaml
cache:
  exact:                      # present → on (``enabled: false`` turns it off again)
    ttl_s: 300                # default lifetime of an entry
    max_ttl_s: 86400          # longest lifetime a request may ask for (x-bastion-cache-ttl)
    max_entries: 10000        # memory backend: least recently used entries go first
    max_memory_bytes: 268435456  # memory backend: all bodies together
    max_entry_bytes: 1048576  # larger answers are not stored
    max_temperature: null     # e.g. 0.0: only requests at most this hot are cached
    backend: auto             # auto (Redis when BASTION_REDIS_URL is set) | memory | redis
    redis_prefix: "bastion:cache:"
    redis_timeout_s: 0.25     # a slower Redis counts as down for this request
    redis_retry_s: 5          # after a Redis failure, memory serves this long before a retry
  semantic:
    enabled: false
    threshold: 0.95           # cosine similarity at or above which a cached answer is served
    embedding_model: embed    # a gateway alias serving /v1/embeddings
    ttl_s: 300
    max_entries: 2000         # all projects and aliases together
    max_text_chars: 8000      # longer messages are not embedded (no semantic lookup)
    timeout_s: 2              # the embedding call; slower → treated as a miss
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.settings import ConfigError, Settings

__all__ = ["CacheConfig", "ExactCacheConfig", "SemanticCacheConfig", "load_cache_config"]


class ExactCacheConfig(BaseModel):
    """The exact-match cache: the same request (after normalisation) gets the same answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    ttl_s: float = Field(300.0, gt=0)
    max_ttl_s: float = Field(86_400.0, gt=0)
    max_entries: int = Field(10_000, ge=1)
    max_entry_bytes: int = Field(1024 * 1024, ge=1024)
    max_memory_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_temperature: float | None = Field(None, ge=0)
    backend: Literal["auto", "memory", "redis"] = "auto"
    redis_prefix: str = Field("bastion:cache:", min_length=1, max_length=200)
    redis_timeout_s: float = Field(0.25, gt=0, le=30)
    redis_retry_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _ttl_within_max(self) -> ExactCacheConfig:
        if self.ttl_s > self.max_ttl_s:
            raise ValueError(f"ttl_s ({self.ttl_s:g}) exceeds max_ttl_s ({self.max_ttl_s:g})")
        return self


class SemanticCacheConfig(BaseModel):
    """The semantic cache: a request whose last user message embeds close enough to a cached
    one's (same alias, same rest of the request) gets that answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    threshold: float = Field(0.95, gt=0, le=1)
    embedding_model: str | None = Field(None, min_length=1)
    ttl_s: float = Field(300.0, gt=0)
    max_entries: int = Field(2_000, ge=1)
    max_text_chars: int = Field(8_000, ge=1)
    timeout_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _model_when_enabled(self) -> SemanticCacheConfig:
        if self.enabled and not self.embedding_model:
            raise ValueError("embedding_model is required when the semantic cache is enabled")
        return self


class CacheConfig(BaseModel):
    """Both caches; a missing part is off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exact: ExactCacheConfig | None = None
    semantic: SemanticCacheConfig | None = None

    @property
    def exact_on(self) -> bool:
        return self.exact is not None and self.exact.enabled

    @property
    def semantic_on(self) -> bool:
        return self.semantic is not None and self.semantic.enabled


def load_cache_config(settings: Settings) -> CacheConfig:
    """Validate ``cache:``; raise :class:`ConfigError` naming the key and its line."""
    raw: Any = settings.sections.get("cache")
    if raw is None:
        return CacheConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{settings.where('cache')}cache: must be a mapping (exact, semantic)")
    try:
        config = CacheConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(p) for p in error["loc"])
        key = f"cache.{path}" if path else "cache"
        where = settings.where(key)
        while key.count(".") > 0 and key not in settings.config_lines:
            key = key[: key.rfind(".")]
            where = settings.where(key)
        full = f"cache.{path}" if path else "cache"
        raise ConfigError(f"{where}{full}: {error['msg']}") from exc
    if config.exact is not None and config.exact.backend == "redis" and not settings.redis_url:
        raise ConfigError(
            f"{settings.where('cache.exact.backend')}cache.exact.backend: 'redis' needs "
            "BASTION_REDIS_URL (or redis_url) to be set"
        )
    return config
