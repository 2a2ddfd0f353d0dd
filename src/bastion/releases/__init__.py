"""Releases and progressive delivery: release bundles, routes per environment, canary / A/B /
shadow rollouts with automatic analysis and rollback, and the history of what served when."""

from bastion.releases.model import ReleaseSpec, ReleaseSpecError, RolloutPolicy, Thresholds
from bastion.releases.store import ConflictError, NotFoundError, ReleaseError

__all__ = [
    "ConflictError",
    "NotFoundError",
    "ReleaseError",
    "ReleaseSpec",
    "ReleaseSpecError",
    "RolloutPolicy",
    "Thresholds",
]
