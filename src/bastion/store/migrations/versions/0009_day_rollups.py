"""Day roll-ups: every hourly roll-up row also adds to a row for its day.

A ``<dimension>:day`` row, keyed by the day's first second, holds the sums of that day's
hours, so a 30-day summary by user reads a row per user and day rather than per user and hour.
Upgrade adds the day rows of the hours stored so far; downgrade removes them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 15:30:00.000000
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Self-contained on purpose: the running code's roll-up format may move on from this revision.
_SUFFIX = ":day"
_DAY_S = 86_400
_ADDITIVE = (
    "span_count",
    "error_count",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_unknown_count",
)
_HISTOGRAMS = ("latency_hist", "ttft_hist")


def _add_histogram(target: dict[str, int], encoded: str | None) -> None:
    for bucket, count in orjson.loads(encoded or "{}").items():
        target[bucket] = target.get(bucket, 0) + int(count)


def _insert(bind: sa.Connection, days: dict[tuple[Any, ...], list[Any]]) -> None:
    if not days:
        return
    columns = ("project_id", "dimension", "hour", "value", *_ADDITIVE, *_HISTOGRAMS)
    statement = sa.text(
        f"INSERT INTO span_rollups ({', '.join(columns)})"
        f" VALUES ({', '.join(':' + c for c in columns)})"
    )
    rows = []
    for key, sums in days.items():
        histograms = [orjson.dumps(h).decode() for h in sums[len(_ADDITIVE) :]]
        rows.append(dict(zip(columns, [*key, *sums[: len(_ADDITIVE)], *histograms], strict=True)))
    bind.execute(statement, rows)


def upgrade() -> None:
    bind = op.get_bind()
    # Pages in key order, so a day's hours arrive together and each day is written once,
    # complete; no read is left open while writing.
    page = sa.text(
        f"SELECT project_id, dimension, value, hour, {', '.join(_ADDITIVE)},"
        f" {', '.join(_HISTOGRAMS)} FROM span_rollups WHERE dimension NOT LIKE :days"
        " AND (project_id, dimension, value, hour) > (:project_id, :dimension, :value, :hour)"
        " ORDER BY project_id, dimension, value, hour LIMIT 10000"
    )
    after: dict[str, Any] = {"project_id": -1, "dimension": "", "value": "", "hour": -1}
    days_like = "%" + _SUFFIX
    days: dict[tuple[Any, ...], list[Any]] = {}
    while rows := bind.execute(page, {**after, "days": days_like}).all():
        for project_id, dimension, value, hour, *numbers in rows:
            key = (project_id, dimension + _SUFFIX, hour - hour % _DAY_S, value)
            sums = days.get(key)
            if sums is None:
                if len(days) >= 5_000:
                    _insert(bind, days)
                    days = {}
                sums = days[key] = [0] * len(_ADDITIVE) + [{} for _ in _HISTOGRAMS]
            for i in range(len(_ADDITIVE)):
                sums[i] += numbers[i]
            for i in range(len(_HISTOGRAMS)):
                _add_histogram(sums[len(_ADDITIVE) + i], numbers[len(_ADDITIVE) + i])
        project_id, dimension, value, hour = rows[-1][:4]
        after = {"project_id": project_id, "dimension": dimension, "value": value, "hour": hour}
    _insert(bind, days)


def downgrade() -> None:
    op.get_bind().execute(
        sa.text("DELETE FROM span_rollups WHERE dimension LIKE :days"), {"days": "%" + _SUFFIX}
    )
