"""Response schemas of the releases API, for its OpenAPI document.

The handlers answer with the ``to_dict()`` of the release store's records; these models
describe those dicts (times are ISO 8601 strings with their UTC offset).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel

__all__ = [
    "ActionOut",
    "CreatedReleaseOut",
    "DeployOut",
    "EventOut",
    "HistoryOut",
    "ReleaseDiffOut",
    "ReleaseListOut",
    "ReleaseOut",
    "RolloutOut",
    "RouteListOut",
    "RouteStatusOut",
]


class ReleaseOut(BaseModel):
    release_id: str = Field(description="the first 16 hex digits of the content hash")
    name: str
    content_hash: str
    spec: dict[str, Any] = Field(description="the release in its file's shape")
    created_by: str
    created_at: str


class CreatedReleaseOut(ReleaseOut):
    created: bool = Field(description="false when a release with the same content existed")


class ReleaseListOut(BaseModel):
    items: list[ReleaseOut] = Field(description="newest first")


class ConfigChangeOut(BaseModel):
    key: str
    a: str
    b: str


class PromptChangeOut(BaseModel):
    name: str
    version_a: int | None
    version_b: int | None
    template_a: str
    template_b: str
    diff: str = Field(description="unified diff of the two templates")


class ReleaseDiffOut(BaseModel):
    a: str
    b: str
    config: list[ConfigChangeOut]
    prompts: list[PromptChangeOut]


class RolloutOut(BaseModel):
    rollout_id: str
    route: str
    environment: str
    strategy: str = Field(description="canary, ab or shadow")
    stable_release_id: str
    candidate_release_id: str
    policy: dict[str, Any]
    state: str
    step: int
    weight: float = Field(description="percent of subjects on the candidate")
    step_started_at: str
    analysis: dict[str, Any] | None
    reason: str | None
    gate: dict[str, Any] | None
    created_by: str
    created_at: str
    updated_at: str


class RouteOut(BaseModel):
    route: str
    environment: str
    stable_release_id: str
    rollout: RolloutOut | None = Field(description="the rollout in progress, if any")


class RouteListOut(BaseModel):
    items: list[RouteOut]


class RouteStatusOut(RouteOut):
    updated_by: str
    updated_at: str
    recent_rollouts: list[RolloutOut] = Field(description="newest first, at most five")


class ActionOut(RouteStatusOut):
    action: str
    result: RolloutOut | str = Field(
        description="the rollout as it ended, or (rollback without a rollout) the release "
        "now serving"
    )


class EventOut(BaseModel):
    id: int
    route: str
    environment: str
    action: str
    rollout_id: str | None
    stable_release_id: str | None
    candidate_release_id: str | None
    strategy: str | None
    weight: float
    step: int | None
    reason: str | None
    actor: str
    at: str


class EventListOut(BaseModel):
    route: str
    items: list[EventOut] = Field(description="oldest first")


class ServingAtOut(BaseModel):
    route: str
    environment: str
    at: str
    serving: EventOut | None = Field(
        description="the route's last event at or before then: its stable release, and the "
        "candidate with its weight; null when nothing served the route then"
    )


class HistoryOut(RootModel[EventListOut | ServingAtOut]):
    """The route's history, or with ``?at=`` what served it at that time."""


class DeployOut(BaseModel):
    route: str
    environment: str
    stable_release_id: str
