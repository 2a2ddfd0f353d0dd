"""What a release is and how a rollout proceeds: validated, immutable value objects.

A :class:`ReleaseSpec` is the content of a release — prompt versions by name, the model alias
and its fallbacks, request parameters, tool definitions and a guard policy — and its identity
is the sha256 of its canonical JSON. A :class:`RolloutPolicy` is how a candidate goes out:
strategy, steps and bake time, analysis thresholds, and the eval gate it needed.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from bastion import names
from bastion.names import ENVIRONMENTS
from bastion.parsing import InputError, InputLimits, load_yaml

__all__ = [
    "ENVIRONMENTS",
    "ReleaseSpec",
    "ReleaseSpecError",
    "RolloutPolicy",
    "Strategy",
    "Thresholds",
    "check_name",
    "parse_duration",
]

Strategy = Literal["canary", "ab", "shadow"]
STRATEGIES: tuple[Strategy, ...] = ("canary", "ab", "shadow")
_SPEC_KEYS = ("name", "description", "prompts", "model", "fallbacks", "params", "tools", "guard")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


class ReleaseSpecError(ValueError):
    """A release file, rollout option or name that is not valid; the message names the key."""


def check_name(value: Any, what: str, rule: names.NameRule = names.ROUTE) -> str:
    """``value`` as a name under ``rule`` (a route by default), or a
    :class:`ReleaseSpecError` saying ``what`` it is."""
    if not rule.is_valid(value):
        raise ReleaseSpecError(f"{what} must be {rule.rule}, not {value!r}")
    return str(value)


def parse_duration(value: str | float | int, what: str) -> float:
    """Seconds from ``60``, ``"60s"``, ``"500ms"``, ``"5m"`` or ``"1h"``."""
    if isinstance(value, bool):
        raise ReleaseSpecError(f"{what} must be a duration like 60s, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if match is None:
            raise ReleaseSpecError(f"{what} must be a duration like 500ms, 60s, 5m, not {value!r}")
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
        seconds = float(match.group(1)) * unit
    if seconds < 0:
        raise ReleaseSpecError(f"{what} must not be negative")
    return seconds


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    """The content of a release. Equal content has an equal :meth:`content_hash`."""

    name: str
    model: str
    prompts: Mapping[str, int] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[Mapping[str, Any], ...] = ()
    guard: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, in the file's shape; empty fields are omitted."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.prompts:
            out["prompts"] = dict(sorted(self.prompts.items()))
        out["model"] = self.model
        if self.fallbacks:
            out["fallbacks"] = list(self.fallbacks)
        if self.params:
            out["params"] = dict(self.params)
        if self.tools:
            out["tools"] = [dict(t) for t in self.tools]
        if self.guard:
            out["guard"] = dict(self.guard)
        return out

    def canonical_json(self) -> bytes:
        return _canonical(self.to_dict())

    def content_hash(self) -> str:
        """``"sha256:" + hex`` of the canonical JSON: the release's content address."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    def release_id(self) -> str:
        """The short id users type: the first 16 hex digits of the content hash."""
        return self.content_hash().removeprefix("sha256:")[:16]

    @classmethod
    def from_dict(cls, data: Any) -> ReleaseSpec:
        """Validate the file shape; :class:`ReleaseSpecError` names the offending key."""
        if not isinstance(data, Mapping):
            raise ReleaseSpecError("a release must be a mapping with at least name and model")
        unknown = sorted(set(data) - set(_SPEC_KEYS))
        if unknown:
            raise ReleaseSpecError(f"unknown key {unknown[0]!r} (known: {', '.join(_SPEC_KEYS)})")
        name = check_name(data.get("name"), "name", names.RELEASE)
        model = data.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ReleaseSpecError("model must be a non-empty string (a gateway model alias)")
        prompts = _prompts(data.get("prompts"))
        fallbacks = _strings(data.get("fallbacks"), "fallbacks")
        params = _mapping(data.get("params"), "params")
        for reserved in ("model", "messages", "prompt", "stream"):
            if reserved in params:
                raise ReleaseSpecError(f"params.{reserved} is not a parameter a release may set")
        tools_raw = data.get("tools")
        tools: tuple[Mapping[str, Any], ...] = ()
        if tools_raw is not None:
            if not isinstance(tools_raw, list) or not all(isinstance(t, dict) for t in tools_raw):
                raise ReleaseSpecError("tools must be a list of tool definitions (mappings)")
            tools = tuple(tools_raw)
        description = data.get("description")
        if description is not None and not isinstance(description, str):
            raise ReleaseSpecError("description must be a string")
        spec = cls(
            name=name,
            model=model.strip(),
            prompts=prompts,
            fallbacks=fallbacks,
            params=params,
            tools=tools,
            guard=_mapping(data.get("guard"), "guard"),
            description=description or None,
        )
        try:
            spec.canonical_json()
        except TypeError as exc:  # e.g. YAML dates or sets
            raise ReleaseSpecError(f"the release holds a value JSON cannot store: {exc}") from exc
        return spec

    @classmethod
    def from_yaml(
        cls, text: str, source: str = "release", limits: InputLimits | None = None
    ) -> ReleaseSpec:
        """Parse a release file (held to ``limits``, the defaults when ``None``); errors are
        prefixed with ``source``."""
        try:
            data = load_yaml(text, limits)
        except InputError as exc:
            raise ReleaseSpecError(f"{source}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ReleaseSpecError as exc:
            raise ReleaseSpecError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReleaseSpec:
        return cls.from_dict(orjson.loads(raw))


def _prompts(raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ReleaseSpecError("prompts must map prompt names to version numbers")
    out: dict[str, int] = {}
    for name, version in raw.items():
        check_name(name, "a prompt name", names.PROMPT)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ReleaseSpecError(f"prompts.{name} must be a version number >= 1, not {version!r}")
        out[str(name)] = version
    return out


def _strings(raw: Any, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ReleaseSpecError(f"{key} must be a list of model aliases")
    return tuple(raw)


def _mapping(raw: Any, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ReleaseSpecError(f"{key} must be a mapping")
    return {str(k): v for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a candidate fails its analysis (compared with stable over the same window)."""

    error_rate_points: float = 1.0  # candidate error rate may exceed stable's by this many points
    p99_ratio: float = 1.5
    ttft_ratio: float = 1.5
    cost_ratio: float = 1.2
    quality_drop: float = 0.05  # relative: 5% below stable's mean score fails
    # Latency differences below this are noise on any machine and never fail a candidate.
    latency_floor_ms: float = 50.0

    def to_dict(self) -> dict[str, float]:
        return {
            "error_rate_points": self.error_rate_points,
            "p99_ratio": self.p99_ratio,
            "ttft_ratio": self.ttft_ratio,
            "cost_ratio": self.cost_ratio,
            "quality_drop": self.quality_drop,
            "latency_floor_ms": self.latency_floor_ms,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Thresholds:
        known = set(cls().to_dict())
        for key, value in raw.items():
            if key not in known:
                raise ReleaseSpecError(f"unknown threshold {key!r} (known: {sorted(known)})")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ReleaseSpecError(f"threshold {key} must be a number >= 0")
        return cls(**{k: float(v) for k, v in raw.items()})


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How a rollout proceeds. ``steps`` are candidate percentages; reaching 100 promotes."""

    strategy: Strategy = "canary"
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    bake_s: float = 60.0
    min_requests: int = 20  # per arm and window before any verdict
    thresholds: Thresholds = field(default_factory=Thresholds)
    # A reference-free scorer spec of the evals (e.g. {"type": "regex", "value": "..."}) applied
    # to a deterministic sample (by span id) of both arms' answers; None: no quality check.
    quality: Mapping[str, Any] | None = None
    quality_sample: float = 1.0
    split: float = 50.0  # A/B: percent of subjects on arm b (the candidate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "steps": list(self.steps),
            "bake_s": self.bake_s,
            "min_requests": self.min_requests,
            "thresholds": self.thresholds.to_dict(),
            "quality": dict(self.quality) if self.quality is not None else None,
            "quality_sample": self.quality_sample,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RolloutPolicy:
        return make_policy(
            strategy=str(raw.get("strategy", "canary")),
            steps=raw.get("steps"),
            bake=raw.get("bake_s", 60.0),
            min_requests=int(raw.get("min_requests", 20)),
            thresholds=raw.get("thresholds") or {},
            quality=raw.get("quality"),
            quality_sample=float(raw.get("quality_sample", 1.0)),
            split=float(raw.get("split", 50.0)),
        )

    def first_weight(self) -> float:
        if self.strategy == "ab":
            return self.split
        if self.strategy == "shadow":
            return 0.0
        return self.steps[0]


# promptfoo assert types that run code from the config; only the CLI runs them.
USER_CODE_ASSERTS = frozenset({"python", "javascript"})


def make_policy(
    *,
    strategy: str,
    steps: Sequence[float] | str | None = None,
    bake: str | float | int = 60.0,
    min_requests: int = 20,
    thresholds: Mapping[str, Any] | None = None,
    quality: Mapping[str, Any] | None = None,
    quality_sample: float = 1.0,
    split: float = 50.0,
) -> RolloutPolicy:
    """Validate rollout options (from the CLI, the API or a stored row)."""
    if strategy not in STRATEGIES:
        raise ReleaseSpecError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if steps is None:
        parsed: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    else:
        items = steps.split(",") if isinstance(steps, str) else list(steps)
        try:
            parsed = tuple(float(str(s).strip().rstrip("%")) for s in items)
        except ValueError as exc:
            raise ReleaseSpecError(f"steps must be percentages like 5,25,50,100: {exc}") from exc
    if not parsed:
        raise ReleaseSpecError("steps must not be empty")
    if any(not 0 < s <= 100 for s in parsed):
        raise ReleaseSpecError("every step must be a percentage in (0, 100]")
    if any(b <= a for a, b in itertools.pairwise(parsed)):
        raise ReleaseSpecError("steps must increase (e.g. 5,25,50,100)")
    if parsed[-1] != 100:
        parsed = (*parsed, 100.0)  # the last step is the promotion
    if min_requests < 1:
        raise ReleaseSpecError("min_requests must be >= 1")
    if not 0 < split < 100:
        raise ReleaseSpecError("split must be a percentage strictly between 0 and 100")
    if quality is not None:
        from bastion.evals.scorers import ScorerError, make_scorer

        kind = str(quality.get("type", "")).removeprefix("not-")
        if kind in USER_CODE_ASSERTS:
            raise ReleaseSpecError(
                f"quality: {kind!r} asserts run user-supplied code, which the server never "
                "does (only `bastion eval run -c` runs them, in a separate process); "
                "use a built-in scorer such as regex or is-json"
            )
        try:
            make_scorer(quality)
        except ScorerError as exc:
            raise ReleaseSpecError(f"quality: {exc}") from exc
    if not 0 < quality_sample <= 1:
        raise ReleaseSpecError("quality_sample must be a fraction in (0, 1]")
    return RolloutPolicy(
        strategy=strategy,  # checked against STRATEGIES above
        steps=parsed,
        bake_s=parse_duration(bake, "bake"),
        min_requests=min_requests,
        thresholds=Thresholds.from_dict(thresholds or {}),
        quality=dict(quality) if quality is not None else None,
        quality_sample=quality_sample,
        split=split,
    )
