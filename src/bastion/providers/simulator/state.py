"""The simulator's per-application state and the steps every API request goes through:
counting, authentication, body parsing, model variant, fault and latency."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from bastion.providers.simulator.config import FAULTS, SimulatorConfig, parse_model
from bastion.providers.simulator.errors import Api, api_error, unauthorized
from bastion.providers.simulator.faults import draw_fault, fault_response, latency_seconds

__all__ = ["SIMULATOR", "Prepared", "SimulatorState", "Stats", "authorized", "prepare"]

_VARIANT_CACHE_SIZE = 1024

Validator = Callable[[dict[str, Any]], str | None]


@dataclass(slots=True)
class Stats:
    """Counters served by ``GET /_sim/stats`` and zeroed by ``POST /_sim/reset``."""

    requests: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        """The counters as plain JSON."""
        return {
            "requests": self.requests,
            "routes": dict(self.routes),
            "models": dict(self.models),
            "faults": dict(self.faults),
            "tokens": {"input": self.tokens["input"], "output": self.tokens["output"]},
        }

    def reset(self) -> None:
        """Zero every counter."""
        self.requests = 0
        for counter in (self.routes, self.models, self.faults, self.tokens):
            counter.clear()


@dataclass(slots=True)
class SimulatorState:
    """Everything one simulator application holds (``app[SIMULATOR]``)."""

    config: SimulatorConfig
    fault_rng: random.Random
    latency_rng: random.Random
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats = field(default_factory=Stats)
    variants: dict[str, tuple[str, SimulatorConfig]] = field(default_factory=dict)

    @classmethod
    def create(cls, config: SimulatorConfig) -> SimulatorState:
        """Fresh state; the fault and latency draws are seeded by ``config.seed``."""
        return cls(
            config=config,
            fault_rng=random.Random(config.seed),
            latency_rng=random.Random(config.seed + 1),
        )

    def variant(self, model: str) -> tuple[str, SimulatorConfig]:
        """The base name and config of ``model`` (cached; raises ValueError when invalid)."""
        found = self.variants.get(model)
        if found is None:
            found = parse_model(model, self.config)
            if len(self.variants) >= _VARIANT_CACHE_SIZE:
                self.variants.clear()
            self.variants[model] = found
        return found


SIMULATOR = web.AppKey("bastion_simulator", SimulatorState)


def authorized(request: web.Request, config: SimulatorConfig) -> bool:
    """Whether the request carries the configured key (any key when none is configured)."""
    if config.api_key is None:
        return True
    headers = request.headers
    bearer = headers.get("Authorization", "")
    if bearer[:7].lower() == "bearer " and bearer[7:].strip() == config.api_key:
        return True
    return headers.get("x-api-key") == config.api_key


@dataclass(slots=True)
class Prepared:
    """A request that passed the common steps and must now be answered normally."""

    body: dict[str, Any]
    name: str
    config: SimulatorConfig
    fault: str | None
    state: SimulatorState


def _header_number(request: web.Request, name: str) -> float | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = float(raw)  # ValueError is answered with 400 by the caller
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(name)
    return value


async def prepare(
    request: web.Request, api: Api, route: str, validate: Validator
) -> Prepared | web.StreamResponse:
    """Count, authenticate, parse, validate, maybe inject a fault, wait the latency.

    Returns the response to send at once (an error or a fault) or the prepared request.
    """
    state = request.app[SIMULATOR]
    stats = state.stats
    stats.requests += 1
    stats.routes[route] += 1
    if not authorized(request, state.config):
        return unauthorized(api)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return api_error(api, 400, f"The request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return api_error(api, 400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return api_error(api, 400, "model: a model name is required.", param="model")
    try:
        name, config = state.variant(model)
    except ValueError as exc:
        return api_error(api, 400, f"model: {exc}", param="model")
    stats.models[model] += 1
    problem = validate(body)
    if problem is not None:
        return api_error(api, 400, problem)
    headers = request.headers
    try:
        forced_latency = _header_number(request, "x-sim-latency-ms")
        if "x-sim-tokens" in headers and int(headers["x-sim-tokens"]) < 1:
            raise ValueError("x-sim-tokens")
    except ValueError:
        return api_error(api, 400, "x-sim-latency-ms and x-sim-tokens must be numbers >= 0/1.")
    fault = headers.get("x-sim-fault")
    if fault is not None:
        fault = fault.strip().lower()
        if fault not in FAULTS:
            kinds = ", ".join(sorted(FAULTS))
            return api_error(api, 400, f"x-sim-fault: unknown fault {fault!r} (one of {kinds})")
    else:
        fault = draw_fault(config, state.fault_rng)
    if fault is not None:
        stats.faults[fault] += 1
        answer = await fault_response(
            request,
            api,
            fault,
            stream=body.get("stream") is True,
            timeout_s=config.timeout_s,
            closing=state.closing,
        )
        if answer is not None:
            return answer
    mean = config.latency_ms if forced_latency is None else forced_latency
    if mean > 0:
        await asyncio.sleep(latency_seconds(mean, config.latency_jitter, state.latency_rng))
    return Prepared(body=body, name=name, config=config, fault=fault, state=state)
