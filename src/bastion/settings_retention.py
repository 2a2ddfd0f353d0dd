"""The retention settings: how long each kind of stored data is kept (``retention:`` and
``projects.<slug>.retention``), part of :class:`bastion.settings.Settings`.

Kept apart from ``bastion.settings`` so that module stays readable; ``bastion.settings``
re-exports these models, import them from there.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RetentionDays", "RetentionPolicy", "RetentionSettings"]

#: A retention period in days: at least one day, at most a century.
RetentionDays = Annotated[int, Field(ge=1, le=36_500)]


class RetentionSettings(BaseModel):
    """How long stored data is kept, for every project (``projects.<slug>.retention``
    overrides it per project), and the server's job that applies it. Unset periods keep data
    forever: nothing is deleted unless configured, since a deletion cannot be undone."""

    # A misspelt period must not pass for an unset one: data would be kept, silently.
    model_config = ConfigDict(extra="forbid")

    spans_days: RetentionDays | None = Field(
        None,
        description="spans that started longer ago than this many days are deleted, with "
        "their traces' summaries and dead letters; hourly and day roll-ups stay; unset: kept "
        "forever (keep it above the longest budget period: a restart rebuilds budgets from "
        "spans)",
    )
    payload_days: RetentionDays | None = Field(
        None,
        description="after this many days a span's payload is dropped (input and output text, "
        "messages, prompt variables, events, free-text attributes); its metrics (tokens, cost, "
        "latency, status, model, user, feature) stay; unset: kept forever",
    )
    scores_days: RetentionDays | None = Field(
        None,
        description="per-item eval results and scores (outputs, scores, reasons) of runs that "
        "finished longer ago than this many days are deleted; the runs and their summaries "
        "stay; unset: kept forever",
    )
    job: bool = Field(
        True,
        description="run the retention job in the server (in worker 0 of serve --workers; on "
        "PostgreSQL one replica at a time)",
    )
    interval_s: float = Field(
        600.0, ge=1, le=86_400, description="time between two passes of the retention job"
    )
    batch_size: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="rows one transaction of the job deletes or rewrites at most: short "
        "transactions let ingestion take turns with it",
    )
    duty_cycle: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of its running time the job may spend inside transactions; it "
        "pauses between batches for the rest, so ingestion keeps flowing",
    )


class RetentionPolicy(BaseModel):
    """One project's retention periods: unset takes the default of ``retention:``, ``forever``
    keeps that kind of data in this project whatever the default says."""

    model_config = ConfigDict(extra="forbid")

    spans_days: RetentionDays | Literal["forever"] | None = Field(
        None, description="days spans are kept (see retention.spans_days)"
    )
    payload_days: RetentionDays | Literal["forever"] | None = Field(
        None, description="days span payloads are kept (see retention.payload_days)"
    )
    scores_days: RetentionDays | Literal["forever"] | None = Field(
        None, description="days per-item eval results and scores are kept"
    )
