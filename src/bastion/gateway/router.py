"""Choosing a deployment for a model alias (weighted; later issues add health and latency)."""

from __future__ import annotations

import bisect
import itertools
import random

from bastion.providers.config import Deployment, GatewayConfig, ModelAlias

__all__ = ["Router"]


class Router:
    """Weighted random choice among an alias's deployments, precomputed per alias."""

    def __init__(self, config: GatewayConfig, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # load spreading, not security
        self._cumulative: dict[str, list[float]] = {
            name: list(itertools.accumulate(d.weight for d in alias.deployments))
            for name, alias in config.aliases.items()
        }

    def choose(self, alias: ModelAlias) -> Deployment:
        deployments = alias.deployments
        if len(deployments) == 1:
            return deployments[0]
        cumulative = self._cumulative[alias.name]
        point = self._rng.random() * cumulative[-1]
        return deployments[min(bisect.bisect_right(cumulative, point), len(deployments) - 1)]
