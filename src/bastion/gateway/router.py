"""Choosing a deployment for a model alias: weighted, least-latency or least-busy.

Every strategy chooses among the *usable* deployments the caller passes (breaker not open,
context window large enough, not already failed in this request when others remain). The
observations the adaptive strategies need (in-flight count, latency EWMA) are kept in memory
per deployment and updated by the attempt loop.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bastion.providers.config import Deployment, GatewayConfig, ModelAlias

__all__ = ["DeploymentStats", "Router"]

_Key = Callable[[Deployment], float]
_EWMA_ALPHA = 0.3  # weight of the newest latency sample: reacts within a few requests


@dataclass(slots=True)
class DeploymentStats:
    """What the router observed of one deployment (shared by aliases routing to it)."""

    in_flight: int = 0
    latency_ewma_ms: float | None = None

    def observe_latency(self, latency_ms: float) -> None:
        previous = self.latency_ewma_ms
        self.latency_ewma_ms = (
            latency_ms
            if previous is None
            else _EWMA_ALPHA * latency_ms + (1 - _EWMA_ALPHA) * previous
        )


class Router:
    """Chooses among an alias's deployments with the alias's ``routing`` strategy.

    ``explore`` is the share of least-latency choices made by weight instead, so a deployment
    that was slow once is measured again rather than starved forever.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        rng: random.Random | None = None,
        explore: float = 0.05,
    ) -> None:
        self._rng = rng or random.Random()  # load spreading, not security
        self._explore = explore
        self._cumulative: dict[str, list[float]] = {
            name: list(itertools.accumulate(d.weight for d in alias.deployments))
            for name, alias in config.aliases.items()
        }
        self._stats: dict[str, DeploymentStats] = {}

    def stats(self, deployment: Deployment) -> DeploymentStats:
        """The observations of ``deployment`` (created on first use)."""
        label = deployment.label
        found = self._stats.get(label)
        if found is None:
            found = self._stats[label] = DeploymentStats()
        return found

    def choose(self, alias: ModelAlias, usable: Sequence[Deployment] | None = None) -> Deployment:
        """One of ``usable`` (default: all of the alias's deployments), which must not be empty."""
        deployments = alias.deployments if usable is None else usable
        if len(deployments) == 1:
            return deployments[0]
        if alias.routing == "least-busy":
            return self._least(deployments, lambda d: self.stats(d).in_flight)
        if alias.routing == "least-latency" and self._rng.random() >= self._explore:
            unmeasured = [d for d in deployments if self.stats(d).latency_ewma_ms is None]
            if unmeasured:
                return self._weighted(alias, unmeasured)
            return self._least(deployments, lambda d: self.stats(d).latency_ewma_ms or 0.0)
        return self._weighted(alias, deployments)

    def _least(self, deployments: Sequence[Deployment], key: _Key) -> Deployment:
        best = min(key(d) for d in deployments)
        tied = [d for d in deployments if key(d) == best]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

    def _weighted(self, alias: ModelAlias, deployments: Sequence[Deployment]) -> Deployment:
        if len(deployments) == 1:
            return deployments[0]
        if deployments is alias.deployments:
            cumulative = self._cumulative[alias.name]  # precomputed: the common case
        else:
            cumulative = list(itertools.accumulate(d.weight for d in deployments))
        point = self._rng.random() * cumulative[-1]
        return deployments[min(bisect.bisect_right(cumulative, point), len(deployments) - 1)]
