"""Providers and model aliases as declared in ``bastion.yaml``.

```yaml
providers:
  openai: {type: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
  claude: {type: anthropic, api_key_env: ANTHROPIC_API_KEY}
models:
  chat:
    deployments:
      - {provider: openai, model: gpt-4o-mini, weight: 1}
    fallbacks: [chat-backup]      # other aliases, tried in order when this one fails
    retries: 2                    # extra attempts per alias on retryable failures
    timeout: {connect_s: 2, first_byte_s: 10, idle_s: 15, total_s: 60}
    routing: weighted             # weighted | least-latency | least-busy
    breaker: {error_rate: 0.5, window_s: 60, min_requests: 5, cooldown_s: 30}
```

Provider keys are only ever named (``api_key_env``), never written in the file; they are read
from the environment when the gateway starts and never stored or logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.settings import ConfigError, Settings

__all__ = [
    "DEFAULT_BASE_URLS",
    "BreakerPolicy",
    "Deployment",
    "GatewayConfig",
    "ModelAlias",
    "ProviderConfig",
    "ProviderKind",
    "Routing",
    "Timeouts",
    "fallback_chains",
    "load_gateway_config",
]

ProviderKind = Literal["openai", "anthropic"]
Routing = Literal["weighted", "least-latency", "least-busy"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


class _ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    headers: dict[str, str] = Field(default_factory=dict)
    anthropic_version: str = "2023-06-01"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use api_key_env")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_auth_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in ("authorization", "x-api-key", "api-key"):
                raise ValueError(
                    f"header {name!r} would hold a secret in the file; use api_key_env"
                )
        return value


class _DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    model: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)


class _TimeoutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect_s: float | None = Field(None, gt=0)
    first_byte_s: float | None = Field(None, gt=0)
    idle_s: float | None = Field(None, gt=0)
    total_s: float | None = Field(None, gt=0)


class _BreakerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(60.0, gt=0)
    min_requests: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, gt=0)


class _AliasSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[_DeploymentSpec] | None = Field(None, min_length=1)
    description: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    retries: int = Field(0, ge=0, le=10)
    timeout: _TimeoutSpec | None = None
    routing: Routing = "weighted"
    breaker: _BreakerSpec | None = None
    # Tiered alias (gateway.tiers): tier name → alias; no deployments of its own.
    tiers: dict[str, str] | None = Field(None, min_length=1)
    classifier: dict[str, Any] | None = None
    default_tier: str | None = None

    @model_validator(mode="after")
    def _deployments_or_tiers(self) -> _AliasSpec:
        if self.tiers is None:
            if self.deployments is None:
                raise ValueError("needs deployments (or tiers, for a tiered alias)")
            for key in ("classifier", "default_tier"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is only for a tiered alias (with tiers)")
            return self
        if self.deployments is not None:
            raise ValueError("a tiered alias has tiers instead of deployments, not both")
        if self.fallbacks:
            raise ValueError("a tiered alias has no fallbacks: give them to its tiers' aliases")
        if self.default_tier is not None and self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not one of its tiers")
        return self


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream endpoint. ``api_key`` is resolved from the environment, never from the file."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    anthropic_version: str = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Deployment:
    """A concrete (provider, upstream model) that serves an alias, with its routing weight."""

    provider: ProviderConfig
    model: str
    weight: float = 1.0
    label: str = field(init=False, compare=False, repr=False)
    """``provider/model``: the key of breakers, router statistics and span attributes."""

    def __post_init__(self) -> None:
        # Computed once: the attempt loop reads it several times per request.
        object.__setattr__(self, "label", f"{self.provider.name}/{self.model}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt upstream timeouts in seconds; None falls back to the gateway settings
    (``connect_timeout_s``, ``read_timeout_s``) or, for ``total_s``, to no limit."""

    connect_s: float | None = None
    first_byte_s: float | None = None
    idle_s: float | None = None
    total_s: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's circuit opens (error rate over a sliding window) and for how long."""

    error_rate: float = 0.5
    window_s: float = 60.0
    min_requests: int = 5
    cooldown_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ModelAlias:
    """A public model name, the deployments that serve it and how failures are handled."""

    name: str
    deployments: tuple[Deployment, ...]
    description: str | None = None
    fallbacks: tuple[str, ...] = ()
    retries: int = 0
    timeout: Timeouts | None = None
    routing: Routing = "weighted"
    breaker: BreakerPolicy | None = None
    tiers: Mapping[str, str] = field(default_factory=dict)
    """Tiered alias: tier name → the alias serving that tier (then ``deployments`` is empty)."""
    classifier: Mapping[str, Any] = field(default_factory=dict)
    default_tier: str = "complex"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Validated providers and aliases. A model name with no alias is not served."""

    providers: Mapping[str, ProviderConfig]
    aliases: Mapping[str, ModelAlias]

    def alias(self, name: str) -> ModelAlias | None:
        return self.aliases.get(name)


def fallback_chains(config: GatewayConfig) -> dict[str, tuple[ModelAlias, ...]]:
    """Each alias followed by its fallbacks, depth first, each alias once (cycles are
    rejected at load, the dedup keeps diamonds finite)."""
    out: dict[str, tuple[ModelAlias, ...]] = {}
    for name in config.aliases:
        seen: list[ModelAlias] = []
        stack = [name]
        while stack:
            current = config.aliases[stack.pop()]
            if any(current is s for s in seen):
                continue
            seen.append(current)
            stack.extend(reversed(current.fallbacks))
        out[name] = tuple(seen)
    return out


def load_gateway_config(
    settings: Settings,
    *,
    extra_providers: Mapping[str, ProviderConfig] | None = None,
    extra_aliases: Mapping[str, ModelAlias] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Validate ``providers:`` and ``models:``; raise :class:`ConfigError` naming key and line."""
    env = os.environ if environ is None else environ
    raw_providers = settings.sections.get("providers") or {}
    raw_models = settings.sections.get("models") or {}
    _require_mapping(settings, "providers", raw_providers)
    _require_mapping(settings, "models", raw_models)

    providers: dict[str, ProviderConfig] = dict(extra_providers or {})
    for name, raw in raw_providers.items():
        spec = _validate(settings, f"providers.{name}", _ProviderSpec, raw)
        key = env.get(spec.api_key_env) if spec.api_key_env else None
        providers[str(name)] = ProviderConfig(
            name=str(name),
            kind=spec.type,
            base_url=spec.base_url or DEFAULT_BASE_URLS[spec.type],
            api_key_env=spec.api_key_env,
            api_key=key or None,
            headers=dict(spec.headers),
            anthropic_version=spec.anthropic_version,
        )

    aliases: dict[str, ModelAlias] = dict(extra_aliases or {})
    for name, raw in raw_models.items():
        spec_alias = _validate(settings, f"models.{name}", _AliasSpec, raw)
        deployments = []
        for i, dep in enumerate(spec_alias.deployments or ()):
            provider = providers.get(dep.provider)
            if provider is None:
                known = ", ".join(sorted(providers)) or "none declared"
                raise ConfigError(
                    f"{settings.where(f'models.{name}.deployments.{i}.provider')}"
                    f"models.{name}.deployments[{i}]: unknown provider {dep.provider!r} "
                    f"(known: {known})"
                )
            deployments.append(Deployment(provider=provider, model=dep.model, weight=dep.weight))
        timeout = spec_alias.timeout
        breaker = spec_alias.breaker
        aliases[str(name)] = ModelAlias(
            name=str(name),
            deployments=tuple(deployments),
            description=spec_alias.description,
            fallbacks=tuple(spec_alias.fallbacks),
            retries=spec_alias.retries,
            timeout=Timeouts(**timeout.model_dump()) if timeout is not None else None,
            routing=spec_alias.routing,
            breaker=BreakerPolicy(**breaker.model_dump()) if breaker is not None else None,
            **_tiering(spec_alias),
        )
    _check_fallbacks(settings, aliases)
    _check_tiers(settings, aliases)
    return GatewayConfig(providers=providers, aliases=aliases)


def _check_fallbacks(settings: Settings, aliases: Mapping[str, ModelAlias]) -> None:
    """Every fallback names another alias, and no chain leads back to where it started."""
    for name, alias in aliases.items():
        for i, target in enumerate(alias.fallbacks):
            key = f"models.{name}.fallbacks.{i}"
            where = settings.where(key if key in settings.config_lines else key[: key.rfind(".")])
            if target == name:
                raise ConfigError(
                    f"{where}models.{name}.fallbacks[{i}]: an alias cannot fall back to itself"
                )
            if target not in aliases:
                known = ", ".join(sorted(aliases))
                raise ConfigError(
                    f"{where}models.{name}.fallbacks[{i}]: unknown model alias {target!r} "
                    f"(known: {known})"
                )
    # Depth-first search for a cycle (a -> b -> a), reported with its path.
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in aliases[name].fallbacks:
            if state.get(target) == 1:
                cycle = " -> ".join([*path[path.index(target) :], target])
                where = settings.where(f"models.{name}.fallbacks")
                raise ConfigError(f"{where}models.{name}.fallbacks: fallback cycle {cycle}")
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in aliases:
        if name not in state:
            visit(name, [name])


def _tiering(spec: _AliasSpec) -> dict[str, Any]:
    if spec.tiers is None:
        return {}
    default = spec.default_tier or (
        "complex" if "complex" in spec.tiers else next(iter(spec.tiers))
    )
    return {
        "tiers": dict(spec.tiers),
        "classifier": dict(spec.classifier or {}),
        "default_tier": default,
    }


def _check_tiers(settings: Settings, aliases: Mapping[str, ModelAlias]) -> None:
    """Tier targets are aliases with deployments (so tiers never chain or cycle), and a
    tiered alias is nobody's fallback (it has nothing to try)."""
    for name, alias in aliases.items():
        for tier, target in alias.tiers.items():
            key = f"models.{name}.tiers.{tier}"
            where = settings.where(key) or settings.where(f"models.{name}.tiers")
            found = aliases.get(target)
            if found is None:
                known = ", ".join(sorted(aliases))
                raise ConfigError(f"{where}{key}: unknown model alias {target!r} (known: {known})")
            if found.tiers or target == name:
                raise ConfigError(
                    f"{where}{key}: {target!r} is a tiered alias; a tier must name an alias "
                    "with deployments"
                )
        for i, target in enumerate(alias.fallbacks):
            if aliases[target].tiers:
                key = f"models.{name}.fallbacks.{i}"
                where = settings.where(key) or settings.where(f"models.{name}.fallbacks")
                raise ConfigError(
                    f"{where}models.{name}.fallbacks[{i}]: {target!r} is a tiered alias; "
                    "fall back to one of its tiers instead"
                )


def _require_mapping(settings: Settings, key: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{settings.where(key)}{key}: must be a mapping of names to settings")


def _validate(settings: Settings, key: str, model: type[BaseModel], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{settings.where(key)}{key}: must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(p) for p in error["loc"])
        full = f"{key}.{path}" if path else key
        where = settings.where(full) or settings.where(key)
        raise ConfigError(f"{where}{full}: {error['msg']}") from exc
