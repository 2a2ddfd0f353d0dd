"""``budgets:`` and ``rate_limits:`` as declared in ``bastion.yaml``.

```yaml
budgets:
  - {scope: project, period: day, limit_usd: 1.00, on_exceed: block}
  - scope: feature
    match: summarise                                    # this feature only
    period: month
    limit_usd: 50
    on_exceed: {degrade_to: chat-cheap}
  - {scope: user, period: week, limit_usd: 5}          # every user gets their own $5 a week
rate_limits:
  - {scope: key, rpm: 100}
  - {scope: model, match: chat, rpm: 600, tpm: 200000}
```

``scope`` says what a rule counts by: ``project`` (the key's project slug), ``key`` (the API
key's id), ``team`` (the ``x-bastion-team`` header or ``metadata.team``), ``feature``, ``user``
and ``tenant`` (the usual attribution headers / body fields) and, for rate limits, ``model``
(the alias served). Without ``match`` each distinct value has its own budget or limit; with it
the rule applies to that value only. A request without a value for the scope (no team header,
say) is not counted by that rule. ``shadow`` counts the shadow copies a release rollout sends
(by route): copies are counted by ``shadow`` rules only, never by the caller's.

A budget counts dollars (``limit_usd``) or tokens (``limit_tokens``: input plus output). A
dollar budget says what to do with a model it cannot price (``unpriced``): ``block`` (the
default: refuse requests that may reach it, since spend that cannot be counted cannot be
capped), ``allow`` (count it as $0) or ``{estimate_from: <model>}`` (count its tokens at that
model's prices).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.providers.config import GatewayConfig
from bastion.settings import ConfigError, Settings

__all__ = [
    "BudgetRule",
    "BudgetScope",
    "LimitsConfig",
    "Period",
    "RateRule",
    "RateScope",
    "Unpriced",
    "load_limits_config",
    "period_bounds",
]

BudgetScope = Literal["project", "team", "feature", "user", "tenant", "key", "shadow"]
RateScope = Literal["project", "team", "tenant", "key", "model", "shadow"]
Unpriced = Literal["block", "allow", "estimate"]
Period = Literal["day", "week", "month"]


class _Degrade(BaseModel):
    model_config = ConfigDict(extra="forbid")

    degrade_to: str = Field(min_length=1)


class _EstimateFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    estimate_from: str = Field(min_length=1)


class _BudgetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: BudgetScope
    period: Period
    limit_usd: float | None = Field(None, gt=0)
    limit_tokens: int | None = Field(None, ge=1)
    on_exceed: Literal["block"] | _Degrade = "block"
    unpriced: Literal["block", "allow"] | _EstimateFrom | None = None
    match: str | int | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> _BudgetSpec:
        if (self.limit_usd is None) == (self.limit_tokens is None):
            raise ValueError("set limit_usd or limit_tokens (one of them)")
        if self.unpriced is not None and self.limit_tokens is not None:
            raise ValueError("unpriced applies to limit_usd budgets only (tokens need no price)")
        return self


class _RateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: RateScope
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    match: str | int | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> _RateSpec:
        if self.rpm is None and self.tpm is None:
            raise ValueError("set rpm, tpm or both")
        return self


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """One ``budgets:`` entry. ``id`` is its position, part of its counters' keys."""

    id: int
    scope: BudgetScope
    period: Period
    limit_usd: float | None  # None: a token budget
    degrade_to: str | None = None  # None: block at 100%
    match: str | None = None
    limit_tokens: int | None = None
    unpriced: Unpriced = "block"
    estimate_from: str | None = None  # the model whose prices count an unpriced one

    @property
    def in_tokens(self) -> bool:
        return self.limit_tokens is not None

    @property
    def limit(self) -> float:
        """The limit in the budget's unit (dollars or tokens)."""
        return float(self.limit_tokens) if self.limit_tokens is not None else self.limit_usd or 0.0

    def describe_limit(self) -> str:
        if self.limit_tokens is not None:
            return f"{self.limit_tokens} tokens"
        return f"${self.limit:.2f}"


@dataclass(frozen=True, slots=True)
class RateRule:
    """One ``rate_limits:`` entry (requests and/or tokens per minute)."""

    id: int
    scope: RateScope
    rpm: int | None = None
    tpm: int | None = None
    match: str | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Validated budgets and rate limits; empty when the file declares none."""

    budgets: tuple[BudgetRule, ...] = ()
    rate_limits: tuple[RateRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.budgets and not self.rate_limits


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """Start and end (epoch seconds, UTC) of the calendar day, ISO week (from Monday) or
    month holding ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()


def load_limits_config(settings: Settings, gateway: GatewayConfig | None = None) -> LimitsConfig:
    """Validate ``budgets:`` and ``rate_limits:``; raise :class:`ConfigError` naming key and line.

    With ``gateway`` given, every ``degrade_to`` must name a declared model alias.
    """
    budgets: list[BudgetRule] = []
    for i, raw in enumerate(_list(settings, "budgets")):
        spec = _validate(settings, f"budgets.{i}", _BudgetSpec, raw)
        degrade = spec.on_exceed.degrade_to if isinstance(spec.on_exceed, _Degrade) else None
        if degrade is not None and gateway is not None:
            where = _where(settings, f"budgets.{i}.on_exceed.degrade_to")
            target = gateway.alias(degrade)
            if target is None:
                known = ", ".join(sorted(gateway.aliases)) or "none declared"
                raise ConfigError(
                    f"{where}budgets[{i}].on_exceed.degrade_to: unknown model alias "
                    f"{degrade!r} (known: {known})"
                )
            if not target.deployments:  # a tiered alias: routing happens before admission
                raise ConfigError(
                    f"{where}budgets[{i}].on_exceed.degrade_to: {degrade!r} is a tiered alias; "
                    "name one of its tiers' aliases"
                )
        estimate: str | None = None
        unpriced: Unpriced = "block"
        if isinstance(spec.unpriced, _EstimateFrom):
            estimate, unpriced = spec.unpriced.estimate_from, "estimate"
        elif spec.unpriced is not None:
            unpriced = spec.unpriced
        budgets.append(
            BudgetRule(
                id=i,
                scope=spec.scope,
                period=spec.period,
                limit_usd=spec.limit_usd,
                degrade_to=degrade,
                match=None if spec.match is None else str(spec.match),
                limit_tokens=spec.limit_tokens,
                unpriced=unpriced,
                estimate_from=estimate,
            )
        )
    rates: list[RateRule] = []
    for i, raw in enumerate(_list(settings, "rate_limits")):
        rate = _validate(settings, f"rate_limits.{i}", _RateSpec, raw)
        unknown_model = (
            rate.scope == "model"
            and rate.match is not None
            and gateway is not None
            and gateway.alias(str(rate.match)) is None
        )
        if unknown_model:
            raise ConfigError(
                f"{_where(settings, f'rate_limits.{i}.match')}rate_limits[{i}].match: "
                f"unknown model alias {rate.match!r}"
            )
        rates.append(
            RateRule(
                id=i,
                scope=rate.scope,
                rpm=rate.rpm,
                tpm=rate.tpm,
                match=None if rate.match is None else str(rate.match),
            )
        )
    return LimitsConfig(budgets=tuple(budgets), rate_limits=tuple(rates))


def _list(settings: Settings, key: str) -> list[Any]:
    raw = settings.sections.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{settings.where(key)}{key}: must be a list of rules")
    return raw


def _where(settings: Settings, key: str) -> str:
    """The line of ``key``, else of its closest declared parent (list items have no key)."""
    while key:
        if key in settings.config_lines:
            return settings.where(key)
        key = key.rpartition(".")[0]
    return settings.where("")


_UNION_MEMBERS = ("literal['block']", "literal['block','allow']", "_Degrade", "_EstimateFrom")


def _validate(settings: Settings, key: str, model: type[BaseModel], raw: Any) -> Any:
    label = key.replace(".", "[", 1) + "]"  # budgets.0 -> budgets[0]
    if not isinstance(raw, dict):
        raise ConfigError(f"{_where(settings, key)}{label}: must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        # Union members add their own names to the location; keep only the user's keys.
        parts = [str(p) for p in error["loc"] if p not in _UNION_MEMBERS]
        path = ".".join(parts)
        full = f"{key}.{path}" if path else key
        shown = f"{label}.{path}" if path else label
        raise ConfigError(f"{_where(settings, full)}{shown}: {error['msg']}") from exc
