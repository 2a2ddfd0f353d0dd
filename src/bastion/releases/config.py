"""The ``releases:`` section of ``bastion.yaml``: polling and analysis timing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from bastion.settings import ConfigError, Settings

__all__ = ["ReleasesConfig", "load_releases_config"]


class ReleasesConfig(BaseModel, extra="forbid"):
    """How often the gateway re-reads routes and the server analyses running rollouts."""

    refresh_s: float = Field(1.0, gt=0, le=60, description="gateway route table poll interval")
    analysis_interval_s: float = Field(
        10.0, gt=0, le=3600, description="how often running rollouts are analysed"
    )
    lease_s: float = Field(
        30.0, gt=0, description="how long one replica's right to decide for a rollout lasts"
    )
    controller: bool = Field(True, description="run the analysis controller in this server")
    max_spans_per_window: int = Field(
        50_000, ge=100, description="spans per arm one analysis reads at most (the newest)"
    )


def load_releases_config(settings: Settings) -> ReleasesConfig:
    """Validate the section; a bad key stops the server with its file and line."""
    raw: Any = settings.sections.get("releases") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{settings.where('releases')}releases must be a mapping")
    try:
        return ReleasesConfig(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = "releases." + ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{settings.where(key)}invalid value for {key!r}: {first['msg']}"
        ) from exc
