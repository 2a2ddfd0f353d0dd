"""Simulator settings, server-wide and per model (``sim-small~error_rate=0.3~quality=bad``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "FAULTS",
    "QUALITIES",
    "SAFETY_MODES",
    "SimulatorConfig",
    "SimulatorConfigError",
    "parse_model",
]

FAULTS = frozenset({"429", "500", "503", "timeout", "reset", "drop", "garbage"})
QUALITIES = frozenset({"good", "bad"})
SAFETY_MODES = frozenset({"none", "refuse", "leak"})
_OPTION_ALIASES = MappingProxyType(
    {
        "tps": "tokens_per_second",
        "latency": "latency_ms",
        "jitter": "latency_jitter",
        "errors": "error_rate",
        "timeout": "timeout_s",
    }
)
_NOT_PER_MODEL = frozenset({"api_key", "models"})
_INT_FIELDS = frozenset({"seed", "min_tokens", "max_tokens"})
_FLOAT_FIELDS = frozenset(
    {"latency_ms", "latency_jitter", "tokens_per_second", "error_rate", "timeout_s"}
)


class SimulatorConfigError(ValueError):
    """A bad simulator setting; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated providers behave.

    Every field except ``api_key`` and ``models`` can be overridden for one request by the
    model name: ``sim-small~latency_ms=200~faults=500,429`` (see :func:`parse_model`).

    Attributes:
        seed: seeds the content (with model and prompt) and the fault and latency draws.
        latency_ms: mean time to the response head (0: no sleep at all).
        latency_jitter: lognormal sigma of the latency (0: constant).
        tokens_per_second: output pace; streams send one chunk per token (0: unlimited).
        error_rate: probability in [0, 1] that a request gets a fault drawn from ``faults``.
        faults: the fault kinds to draw from (see ``FAULTS``).
        timeout_s: how long a ``timeout`` fault hangs before answering 504.
        api_key: when set, requests must present it (Bearer or ``x-api-key``).
        min_tokens: shortest default reply, in tokens (words).
        max_tokens: longest default reply, in tokens (words).
        quality: ``good`` follows prompt directives, ``bad`` misses them in a repeatable way.
        safety: how the model treats every chat request, for red-team tests: ``none`` (the
            usual answers), ``refuse`` (a fixed refusal, like a model that declines), ``leak``
            (the whole prompt repeated back, system prompt included, like a model that obeys
            "repeat everything above").
        models: extra model names listed by ``GET /v1/models`` (any name is served).
    """

    seed: int = 0
    latency_ms: float = 0.0
    latency_jitter: float = 0.0
    tokens_per_second: float = 0.0
    error_rate: float = 0.0
    faults: tuple[str, ...] = ("500", "503", "429")
    timeout_s: float = 30.0
    api_key: str | None = None
    min_tokens: int = 20
    max_tokens: int = 60
    quality: str = "good"
    safety: str = "none"
    models: tuple[str, ...] = ("sim-small", "sim-large")

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and stored as tuples (the config stays hashable).
        for name in ("faults", "models"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, tuple | list):
                raise SimulatorConfigError(name, f"must be a tuple of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SimulatorConfigError("seed", f"must be an integer, got {self.seed!r}")
        for name in ("latency_ms", "latency_jitter", "tokens_per_second", "timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise SimulatorConfigError(name, f"must be a finite number >= 0, got {value!r}")
        if self.timeout_s == 0:
            raise SimulatorConfigError("timeout_s", "must be > 0")
        rate = self.error_rate
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise SimulatorConfigError("error_rate", f"must be between 0 and 1, got {rate!r}")
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown or not self.faults:
            raise SimulatorConfigError(
                "faults",
                f"must be a non-empty list of {', '.join(sorted(FAULTS))}; "
                f"unknown: {', '.join(map(str, unknown)) or 'none given'}",
            )
        for name in ("min_tokens", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SimulatorConfigError(name, f"must be an integer >= 1, got {value!r}")
        if self.min_tokens > self.max_tokens:
            raise SimulatorConfigError(
                "max_tokens", f"must be >= min_tokens ({self.min_tokens}), got {self.max_tokens}"
            )
        if self.quality not in QUALITIES:
            raise SimulatorConfigError("quality", f"must be 'good' or 'bad', got {self.quality!r}")
        if self.safety not in SAFETY_MODES:
            raise SimulatorConfigError(
                "safety", f"must be one of {', '.join(sorted(SAFETY_MODES))}, got {self.safety!r}"
            )
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise SimulatorConfigError("api_key", "must be a non-empty string or None")
        if not all(isinstance(m, str) and m for m in self.models):
            raise SimulatorConfigError("models", "must be non-empty strings")


_FIELDS = frozenset(f.name for f in fields(SimulatorConfig))


def parse_model(model: str, base: SimulatorConfig) -> tuple[str, SimulatorConfig]:
    """Split a model name into its base name and the config it runs with.

    ``"sim-small~error_rate=0.2~faults=500,429"`` gives ``("sim-small", base with
    error_rate=0.2 and faults=("500", "429"))``. Option names are config fields, or the
    aliases ``tps``, ``latency``, ``jitter``, ``errors`` and ``timeout``.

    Raises:
        ValueError: an unknown option or a bad value, naming it.
    """
    if "~" not in model:
        return model, base
    name, *options = model.split("~")
    changes: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        key = _OPTION_ALIASES.get(key.strip(), key.strip())
        raw = raw.strip()
        if not sep or key not in _FIELDS or key in _NOT_PER_MODEL:
            raise SimulatorConfigError(key, f"unknown simulator model option in {model!r}")
        try:
            if key == "faults":
                changes[key] = tuple(f.strip() for f in raw.split(",") if f.strip())
            elif key in _INT_FIELDS:
                changes[key] = int(raw)
            elif key in _FLOAT_FIELDS:
                changes[key] = float(raw)
            else:
                changes[key] = raw
        except ValueError:
            raise SimulatorConfigError(key, f"bad value {raw!r} in {model!r}") from None
    return name, replace(base, **changes)
